"""The Apache MXNet front end: Gluon ``HybridBlock`` factories and saved symbol models, exported with mx.onnx
(MXNet's own exporter), all of it in the MXNet environment (``convkit env create mxnet``), driven as a worker.

NOTE: why a worker and not an import: MXNet 1.9.1, its last release, needs numpy<1.24 and onnx<=1.18 (the core
pins numpy 2 and onnx 1.23). The core keeps a handle (a ``WorkerModel``), and each job is one request to
``convkit/frontends/mxnet/env/worker.py`` run by the environment's Python. mxnet is never imported here.

Sources: ``path/to/file.py:factory`` or ``package.module:factory`` with ``--framework mxnet`` (the factory
returns an initialized ``gluon.HybridBlock``; ``--weights`` takes an ``.npz`` keyed by its parameter paths,
``fc1.weight``, or its ``save_parameters`` file), and a saved symbol model (``HybridBlock.export`` or
``mx.model.save_checkpoint``: ``model-symbol.json`` with ``model-0000.params``): its folder, its
``-symbol.json`` or its ``.params`` file. Neither format is a pickle: MXNet's ``.params`` is its own array
format, which runs no code when read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from convkit.errors import InputFileError
from convkit.frontends._worker.frontend import TrainableEnvWorkerFrontend, WorkerModel
from convkit.frontends.base import LoadOptions

_SYMBOL_SUFFIX = "-symbol.json"
_PARAMS = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d{4})\.params$")
_SAVE_HINT = "save the model with HybridBlock.export(prefix) or mx.model.save_checkpoint, which write both"


def symbol_files(path: Path) -> tuple[Path, list[Path]] | None:
    """The symbol file of a saved MXNet model at ``path`` (its folder, ``-symbol.json`` or ``.params``) and
    the parameter files that go with it (``prefix-NNNN.params``, one per saved epoch; a ``.params`` path
    names just itself), or ``None`` when ``path`` is none of those."""
    if path.is_dir():
        symbols = sorted(path.glob(f"*{_SYMBOL_SUFFIX}"))
        if len(symbols) != 1:
            return None
        path = symbols[0]
    match = _PARAMS.match(path.name)
    if match is not None:
        symbol = path.with_name(match["prefix"] + _SYMBOL_SUFFIX)
        return (symbol, [path]) if symbol.is_file() else None
    if not path.name.endswith(_SYMBOL_SUFFIX) or not path.is_file():
        return None
    prefix = path.name.removesuffix(_SYMBOL_SUFFIX)
    params = []
    for candidate in sorted(path.parent.iterdir()):
        match = _PARAMS.match(candidate.name)
        if match is not None and match["prefix"] == prefix and candidate.is_file():
            params.append(candidate)
    return path, params


class MXNetFrontend(TrainableEnvWorkerFrontend):
    """Apache MXNet through its own environment: Gluon factories (``--framework mxnet``) and saved symbol
    models, exported with mx.onnx, run by MXNet itself for the reference outputs."""

    name = "mxnet"
    exporter = "mx.onnx"
    version_dists: ClassVar[dict[str, str]] = {"mxnet": "mxnet", "onnx (mxnet env)": "onnx"}
    # NOTE: why: MXNet warns in Python at import and while converting (numpy and onnx deprecations); a quiet
    # worker keeps them off the user's terminal, and with --verbose the worker also logs mx.onnx's conversion
    # node by node (the worker's stderr is kept for errors and --verbose).
    quiet_env: ClassVar[dict[str, str]] = {"PYTHONWARNINGS": "ignore", "CONVKIT_MXNET_QUIET": "1"}
    # NOTE: why NCHW: Gluon's Conv2D is channels-first and its Dense stores (out, in), both like PyTorch's.
    reference_layout = "NCHW"

    def claims_path(self, path: Path) -> bool:
        """A saved symbol model: a folder with one ``*-symbol.json``, that file, or a ``prefix-NNNN.params``
        beside its ``prefix-symbol.json``."""
        return symbol_files(path) is not None

    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> WorkerModel:
        """A handle on ``source``, checked here without starting MXNet: the factory's file or the saved
        model's two files must exist (``factory_model`` for factories). MXNet loads it in the worker at each
        request.

        Raises:
            InputFileError: a file is missing, the path is no saved MXNet model, or it has several epochs'
                parameters and the one meant is not named.
        """
        from convkit.core.sources import is_factory_source

        if is_factory_source(source):
            return self.factory_model(source, options)
        path = Path(source)
        found = symbol_files(path)
        if found is None:
            raise InputFileError(
                f"{source} is not a saved MXNet model" if path.exists() else f"model {source} does not exist",
                "give model-symbol.json (with model-0000.params beside it), their folder, "
                "or path/to/file.py:factory",
            )
        symbol, params = found
        if not params:
            raise InputFileError(
                f"{symbol.name} has no parameters beside it ({symbol.name.removesuffix(_SYMBOL_SUFFIX)}"
                "-NNNN.params)",
                _SAVE_HINT,
            )
        if len(params) > 1:
            # NOTE: why not the latest: a training run saves a checkpoint per epoch, and the best one is often
            # not the last; guessing would verify a model other than the one meant.
            raise InputFileError(
                f"{symbol.name} has parameters for several epochs ({', '.join(p.name for p in params[:4])})",
                "give the .params file of the one you mean",
            )
        if options.weights:
            raise InputFileError(
                f"--weights applies to models built by a factory; {source} carries its own parameters",
                "give the model's code as path/to/file.py:factory together with --weights",
            )
        spec = {
            "kind": "symbol",
            "symbol_file": str(symbol.absolute()),
            "params_file": str(params[0].absolute()),
        }
        return WorkerModel(source, options, spec)
