"""The Theano front end, through PyTensor (Theano's maintained successor): graphs built by a factory,
converted to ONNX by convkit's own converter, all of it in the Theano environment (``convkit env create
theano``), driven as a worker.

NOTE: why PyTensor: Theano 1.0.5 is unmaintained and does not run on numpy 2 or Python 3.11; PyTensor
keeps its programming model (symbolic variables, shared variables, ``pytensor.grad``, ``pytensor.function``)
and its Op graph. No ONNX exporter exists for either, so ``convkit/frontends/theano/env/converter.py``
converts the graph Op by Op (its docstring says why directly rather than through JAX).

NOTE: why a worker and not an import: PyTensor brings numba, llvmlite and scipy pinned to its own range,
and compiles C modules at first use; none of it belongs in the core. The core keeps a handle (a
``WorkerModel``), and each job is one request to ``convkit/frontends/theano/env/worker.py``. pytensor is never
imported here.

Sources: ``path/to/file.py:factory`` or ``package.module:factory`` with ``--framework theano`` (or
``pytensor``). The factory returns ``{"inputs": [x, ...], "outputs": [y, ...]}`` or ``(inputs, outputs)``:
named symbolic input variables, the output variables computed from them and from shared variables (the
weights). Input names are the variables' names; ``--weights`` is an ``.npz`` keyed by shared variable name.
PyTensor has no model file of its own (graphs are saved by pickling), so there is no file source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from convkit.core.inputs import InputSpec
from convkit.errors import InputFileError
from convkit.frontends._worker.frontend import TrainableEnvWorkerFrontend, WorkerModel
from convkit.frontends.base import LoadOptions


class TheanoFrontend(TrainableEnvWorkerFrontend):
    """Theano (as PyTensor) through its own environment: factories returning symbolic graphs
    (``--framework theano``), converted by convkit's PyTensor-to-ONNX converter, run by
    ``pytensor.function`` for the reference outputs."""

    name = "theano"
    exporter = "convkit-pytensor"
    version_dists: ClassVar[dict[str, str]] = {
        "pytensor": "pytensor",
        "onnx (theano env)": "onnx",
    }
    # NOTE: why: PyTensor warns at import (no BLAS found through pip, deprecations) on every request; a quiet
    # worker keeps that off the user's terminal (its stderr is kept for errors and --verbose).
    quiet_env: ClassVar[dict[str, str]] = {"PYTHONWARNINGS": "ignore"}
    # NOTE: why longer: on a machine whose PyTensor cache (~/.pytensor) is empty, the first export or run
    # compiles a few dozen C modules (about a minute on two cores); later processes load them.
    timeouts: ClassVar[dict[str, float]] = {"export": 600.0, "run": 600.0, "reference_cnn": 600.0}
    # NOTE: why NCHW: the reference CNN is written channels-first, kernels (out, in, kh, kw) as in
    # PyTorch, so canonical weights load unchanged (dense layers multiply by W.T).
    reference_layout = "NCHW"

    def claims_path(self, path: Path) -> bool:
        """Never: PyTensor has no model file format convkit could read without unpickling code."""
        return False

    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> WorkerModel:
        """A handle on the factory ``source``, checked here without starting PyTensor (its file and
        ``--weights`` must exist); the worker builds the graph at each request.

        Raises:
            InputFileError: not a factory, or its file or the weights file is missing.
        """
        from convkit.core.sources import is_factory_source

        if not is_factory_source(source):
            raise InputFileError(
                f"{source} is not a PyTensor model source: Theano/PyTensor models are given by the code that "
                "builds their graph",
                "give path/to/file.py:factory, a function returning {'inputs': [x], 'outputs': [y]}",
            )
        return self.factory_model(source, options)

    def input_specs(self, model: WorkerModel) -> list[InputSpec] | None:
        """The inputs the graph declares (``pt.tensor("x", dtype=..., shape=(None, 1, 28, 28))``), the
        first dim symbolic (``batch``) when the graph leaves it open; ``None`` when another size is unknown
        (give ``--input``).

        NOTE: why factories too (the base asks saved models only): a PyTensor input variable carries its
        dtype and often its sizes, so ``--input`` can be left out; the worker start this costs is paid only
        when it is.
        """
        declared = self._describe(model).get("input_specs")
        if not declared or any(d is None for item in declared for d in item["dims"][1:]):
            return None
        return [
            InputSpec(item["name"], ["batch" if d is None else int(d) for d in item["dims"]], item["dtype"])
            for item in declared
        ]
