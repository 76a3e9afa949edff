"""The PaddlePaddle front end: ``paddle.nn.Layer`` factories and saved inference models, exported with
paddle2onnx, all of it in the PaddlePaddle environment (``convkit env create paddle``), driven as a worker.

NOTE: why a worker and not an import: paddle2onnx requires onnx<=1.17 (the core pins 1.23), and Paddle
cannot share a process with TensorFlow (``import tensorflow; import paddle`` is a segfault). The core keeps a
handle (a ``WorkerModel``), a description of what to load, and each job (run, export, build or train the
reference CNN) is one request to ``convkit/frontends/paddle/env/worker.py`` run by the environment's Python.
paddle is never imported here.

Sources: ``path/to/file.py:factory`` or ``package.module:factory`` (with ``--framework paddle``: the
factory is imported in the worker, so its framework cannot be inferred here), and a saved inference model
(``paddle.jit.save``'s ``model.json`` or ``model.pdmodel`` with ``model.pdiparams``): its folder, one of its
files, or its path prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from convkit.errors import InputFileError
from convkit.frontends._worker.frontend import TrainableEnvWorkerFrontend, WorkerModel
from convkit.frontends.base import LoadOptions

_PROGRAM_SUFFIXES = (".json", ".pdmodel")
_PARAMS_SUFFIX = ".pdiparams"


def inference_model_files(path: Path) -> tuple[Path, Path] | None:
    """The program and parameter files of a saved Paddle inference model at ``path`` (a folder holding one,
    one of its files, or its prefix), or ``None`` when ``path`` is not one."""
    if path.is_dir():
        found = [
            (program, program.with_suffix(_PARAMS_SUFFIX))
            for suffix in _PROGRAM_SUFFIXES
            for program in sorted(path.glob(f"*{suffix}"))
            if program.with_suffix(_PARAMS_SUFFIX).is_file()
        ]
        return found[0] if len(found) == 1 else None
    if path.suffix in (*_PROGRAM_SUFFIXES, _PARAMS_SUFFIX):
        path = path.with_suffix("")
    for suffix in _PROGRAM_SUFFIXES:
        program = path.with_name(path.name + suffix)
        params = path.with_name(path.name + _PARAMS_SUFFIX)
        if program.is_file() and params.is_file():
            return program, params
    return None


class PaddleFrontend(TrainableEnvWorkerFrontend):
    """PaddlePaddle through its own environment: factories (``--framework paddle``) and saved inference
    models, exported with paddle2onnx, run by Paddle itself for the reference outputs."""

    name = "paddle"
    exporter = "paddle2onnx"
    version_dists: ClassVar[dict[str, str]] = {
        "paddle": "paddlepaddle",
        "paddle2onnx": "paddle2onnx",
        "onnx (paddle env)": "onnx",
    }
    # NOTE: why: paddle2onnx sets POLYGRAPHY_AUTOINSTALL_DEPS=1 before Polygraphy runs, which pip-installs
    # onnxruntime at export time; the worker never runs Polygraphy, and this keeps it from installing any.
    worker_env: ClassVar[dict[str, str]] = {"POLYGRAPHY_AUTOINSTALL_DEPS": "0"}
    # NOTE: why these: Paddle logs through glog from C++ (executor banners, warnings) and Python warnings at
    # import; a quiet worker keeps them off the user's terminal (its stderr is kept for errors and --verbose).
    quiet_env: ClassVar[dict[str, str]] = {"GLOG_minloglevel": "2", "GLOG_v": "0", "PYTHONWARNINGS": "ignore"}
    timeouts: ClassVar[dict[str, float]] = {"export": 600.0}
    # NOTE: why NCHW: Paddle's Conv2D is channels-first like PyTorch's, so canonical weights need only the
    # dense kernels transposed (Paddle's Linear stores (in, out)).
    reference_layout = "NCHW"

    def claims_path(self, path: Path) -> bool:
        """A saved inference model: a folder with ``*.json``/``*.pdmodel`` + ``*.pdiparams``, or its files."""
        return inference_model_files(path) is not None

    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> WorkerModel:
        """A handle on ``source``, checked here without starting Paddle: the factory's file or the saved
        model's files must exist (``factory_model`` for factories). Paddle loads it in the worker at each
        request.

        Raises:
            InputFileError: the file is missing, or the path is no Paddle inference model.
        """
        from convkit.core.sources import is_factory_source

        if is_factory_source(source):
            return self.factory_model(source, options)
        files = inference_model_files(Path(source))
        if files is None:
            raise InputFileError(
                f"{source} is not a Paddle inference model"
                if Path(source).exists()
                else f"model {source} does not exist",
                "give a folder saved by paddle.jit.save (model.json or model.pdmodel + model.pdiparams), "
                "or path/to/file.py:factory",
            )
        if options.weights:
            raise InputFileError(
                f"--weights applies to models built by a factory; {source} carries its own weights",
                "give the model's code as path/to/file.py:factory together with --weights",
            )
        program, params = (path.absolute() for path in files)
        spec = {
            "kind": "inference",
            "prefix": str(program.with_suffix("")),
            "model_file": str(program),
            "params_file": str(params),
        }
        return WorkerModel(source, options, spec)
