"""What every front end that drives a worker process shares: a handle on a model that lives in the worker,
the ``describe`` request, input specs, and runs whose recent results are remembered (``WorkerFrontend``); and
for the front ends whose framework lives in an environment of its own (``paddle``, ``mxnet``, ``chainer``,
``caffe``, ``theano``), everything else but loading (``EnvWorkerFrontend``, ``TrainableEnvWorkerFrontend``).

``WorkerFrontend`` subclasses (the Keras backends) implement ``_call(request, workdir, verbose)``, which runs
one request in their worker (see ``convkit.frontends._worker.call_worker``) and returns the worker's result.
``EnvWorkerFrontend`` subclasses only set class attributes (``exporter``, ``version_dists`` ...) and
implement ``load`` and ``claims_path``; their worker scripts answer the requests ``describe``, ``run``,
``export``, ``reference_cnn`` (and ``train_reference_cnn``) as ``convkit/frontends/paddle/env/worker.py``
documents.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from convkit.core.artifacts import save_npz_atomic
from convkit.core.inputs import InputSpec
from convkit.errors import DataError, ExportError, InputFileError
from convkit.frontends.base import ExportOptions, ExportResult, LoadOptions

# NOTE: why a few: the core runs the same inputs twice in a row (the export's example, then its check);
# each run otherwise costs a worker start.
REMEMBERED_RESULTS = 4
DEFAULT_TIMEOUT_S = 300.0


@dataclass
class WorkerModel:
    """A handle on a model that lives in the worker: what to load, never the model itself.

    Attributes:
        source: what the user gave (``file.py:factory``, a file or folder), or ``reference_cnn``.
        options: the load options (``verbose`` lets the worker's output through).
        spec: the worker's source description (``{"kind": "factory" | ..., ...}``).
    """

    source: str
    options: LoadOptions
    spec: dict[str, Any]
    _described: dict[str, Any] | None = field(default=None, repr=False)
    _outputs: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def is_factory(self) -> bool:
        return bool(self.spec["kind"] == "factory")


class WorkerFrontend:
    """The Frontend protocol's inputs and runs, for front ends whose framework runs in a worker."""

    name = ""
    isolated = True
    """Its framework runs in another process: ``module:factory`` sources are imported there, not here."""

    def _call(self, request: dict[str, Any], workdir: Path, verbose: bool) -> dict[str, Any]:
        raise NotImplementedError

    def _scratch(self) -> tempfile.TemporaryDirectory[str]:
        return tempfile.TemporaryDirectory(prefix=f"convkit-{self.name}-")

    def _describe(self, model: WorkerModel) -> dict[str, Any]:
        if model._described is None:
            with self._scratch() as folder:
                request = {"kind": "describe", "source": model.spec}
                model._described = self._call(request, Path(folder), model.options.verbose)
        return model._described

    def input_names(self, model: WorkerModel) -> list[str] | None:
        """A saved model's input names (asked of the worker once); ``None`` for factories.

        NOTE: why not ask for factories: that would cost a worker start on every export; the worker checks
        the names when it exports or runs, with the same message.
        """
        if model.is_factory:
            return None
        names = self._describe(model).get("input_names")
        return list(names) if names is not None else None

    def input_specs(self, model: WorkerModel) -> list[InputSpec] | None:
        """The shapes a saved model declares (unknown dims symbolic: ``batch`` first); ``None`` for
        factories (give ``--input``)."""
        if model.is_factory:
            return None
        declared = self._describe(model).get("input_specs")
        if not declared:
            return None
        specs = []
        for item in declared:
            dims: list[int | str] = [
                d if d is not None else ("batch" if axis == 0 else f"{item['name']}_dim{axis}")
                for axis, d in enumerate(item["dims"])
            ]
            specs.append(InputSpec(item["name"], dims, item["dtype"]))
        return specs

    def run(self, model: WorkerModel, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model natively in the worker; outputs flattened in order."""
        key = digest(inputs)
        if key in model._outputs:
            return [value.copy() for value in model._outputs[key]]
        with self._scratch() as folder:
            workdir = Path(folder)
            save_npz_atomic(workdir / "inputs.npz", inputs)
            request = {
                "kind": "run",
                "source": model.spec,
                "inputs": str(workdir / "inputs.npz"),
                "outputs": str(workdir / "outputs.npz"),
            }
            self._call(request, workdir, model.options.verbose)
            outputs = load_outputs(workdir / "outputs.npz")
        remember(model, key, outputs)
        return [value.copy() for value in outputs]

    def _export_in_worker(
        self,
        model: WorkerModel,
        specs: Sequence[InputSpec],
        example: Mapping[str, np.ndarray],
        opset: int | None,
        workdir: Path,
        verbose: bool,
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        """Ask the worker to export into ``workdir/exported.onnx``; returns its result and the framework's
        outputs for ``example`` (the reference the core checks the export against)."""
        save_npz_atomic(workdir / "example.npz", example)
        request = {
            "kind": "export",
            "source": model.spec,
            "specs": [{"name": s.name, "dims": list(s.dims), "dtype": s.dtype} for s in specs],
            "opset": opset,
            "onnx": str(workdir / "exported.onnx"),
            "example": str(workdir / "example.npz"),
            "reference": str(workdir / "reference.npz"),
        }
        result = self._call(request, workdir, verbose)
        return result, load_outputs(workdir / "reference.npz")


class EnvWorkerFrontend(WorkerFrontend):
    """A front end whose framework lives in an environment of its own (``convkit env create <env>``), driven
    by one worker script: availability, versions, requests, factories, export and the reference CNN.

    A subclass sets the class attributes below and implements ``load`` (with ``factory_model`` for
    ``module:factory`` sources) and ``claims_path``.
    """

    exporter = ""
    """The exporter's name in reports and messages (``paddle2onnx``)."""
    version_dists: ClassVar[dict[str, str]] = {}
    """What ``versions`` reports: label -> distribution installed in the environment."""
    worker_env: ClassVar[dict[str, str]] = {}
    """Environment variables for every worker process."""
    quiet_env: ClassVar[dict[str, str]] = {}
    """More variables, set unless ``--verbose`` (quieting the framework's logging)."""
    timeouts: ClassVar[dict[str, float]] = {}
    """Seconds per request kind, where the default (300 s) is not enough (``CONVKIT_WORKER_TIMEOUT`` overrides
    them all)."""
    reference_layout = "NCHW"
    """The reference CNN's input layout in this framework."""

    @property
    def worker_script(self) -> Path:
        """The worker file the environment's Python runs: ``env/worker.py`` in the front end's own folder
        (``frontends/<name>/``); it never imports convkit."""
        module = sys.modules[type(self).__module__]
        return Path(str(module.__file__)).resolve().parent / "env" / "worker.py"

    @property
    def env(self) -> str:
        """The framework environment it runs in (the registry's ``FrontendInfo.env``)."""
        from convkit.frontends import frontend_info

        return frontend_info(self.name).env or self.name

    def is_available(self) -> str | None:
        """``None`` when the environment is created and current, else why not (with the command that
        creates it)."""
        from convkit.frontends._worker.envs import unavailable_reason

        if not self.worker_script.is_file():
            return f"the worker script {self.worker_script} is missing"
        return unavailable_reason(self.env)

    def versions(self) -> dict[str, str]:
        """The framework, its exporter and the environment's onnx, read from the environment's metadata (no
        process started)."""
        from convkit.frontends._worker.envs import env_packages

        installed = env_packages(self.env)
        return {label: installed[dist] for label, dist in self.version_dists.items() if dist in installed}

    def _call(
        self,
        request: dict[str, Any],
        workdir: Path,
        verbose: bool,
        timeout: float | None = None,
        progress: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        from convkit.frontends._worker import Worker, call_worker, default_timeout
        from convkit.frontends._worker.envs import require_env

        worker = Worker(
            self.name, require_env(self.env), self.worker_script, dict(self.worker_env), dict(self.quiet_env)
        )
        seconds = default_timeout(timeout or self.timeouts.get(request["kind"], DEFAULT_TIMEOUT_S))
        return call_worker(worker, request, workdir, seconds, verbose, progress)

    # ------------------------------------------------------------------------------------------------ load
    def factory_model(self, source: str, options: LoadOptions) -> WorkerModel:
        """A handle on ``file.py:factory`` or ``package.module:factory``, checked here without starting the
        framework (the factory's file and ``--weights`` must exist).

        The worker calls the factory at each request; a factory's weights are those of the handle's first
        request (kept in a temporary ``snapshot``), so that every request on one handle sees one model even
        when the factory does not seed its initialisation.

        Raises:
            InputFileError: the factory's file or the weights file is missing.
        """
        weights = str(Path(options.weights).absolute()) if options.weights else None
        if weights is not None and not Path(weights).is_file():
            raise InputFileError(f"weights file {options.weights} does not exist", "check --weights")
        module, _, attr = source.rpartition(":")
        if module.endswith(".py"):
            if not Path(module).is_file():
                raise InputFileError(f"source file {module} does not exist", "check the path before the ':'")
            module = str(Path(module).absolute())
        folder = Path(tempfile.mkdtemp(prefix=f"convkit-{self.name}-model-"))
        spec = {
            "kind": "factory",
            "source": f"{module}:{attr}",
            "weights": weights,
            "unsafe_pickle": options.unsafe_pickle,
            "snapshot": str(folder / "weights.npz"),
        }
        handle = WorkerModel(source, options, spec)
        weakref.finalize(handle, remove, folder)
        return handle

    # --------------------------------------------------------------------------------------------- export
    def export(
        self,
        model: WorkerModel,
        specs: Sequence[InputSpec],
        example: Mapping[str, np.ndarray],
        path: Path,
        options: ExportOptions,
    ) -> ExportResult:
        """Export in the worker to ``path``, then conform the file in the core (``convkit.graph.conform``):
        inputs named and shaped after ``specs``, outputs named ``output`` / ``output_N``, weights as
        initializers named after the model's parameters (the worker's ``param_names``).

        Raises:
            ExportError: the exporter failed, or the model fixed a dimension meant to be dynamic.
        """
        from convkit.graph.conform import conform_file

        if options.exporter not in (None, self.exporter):
            raise ExportError(
                f"unknown exporter {options.exporter!r} for {self.name}", f"use {self.exporter} or omit it"
            )
        verbose = options.verbose or model.options.verbose
        with self._scratch() as folder:
            workdir = Path(folder)
            result, reference = self._export_in_worker(model, specs, example, options.opset, workdir, verbose)
            opset, notes = conform_file(
                workdir / "exported.onnx",
                Path(path),
                specs,
                exporter=self.exporter,
                initializer_names=result.get("param_names") or {},
                requested_opset=options.opset,
                exporter_version=result.get("exporter_version"),
            )
        remember(model, digest(example), reference)
        return ExportResult(self.exporter, opset, notes)

    # ---------------------------------------------------------------------- reference CNN (convkit matrix)
    def reference_cnn(self, weights: Mapping[str, np.ndarray]) -> WorkerModel:
        """The reference CNN carrying canonical ``weights``, made by the worker in a temporary folder that
        lives as long as the returned handle (the worker answers with the source spec that loads it)."""
        from convkit.reference.cnn import SHAPES

        wrong = [n for n, s in SHAPES.items() if n not in weights or tuple(np.shape(weights[n])) != s]
        if wrong:
            raise DataError(f"reference-CNN weights missing or misshapen: {', '.join(wrong)}")
        folder = Path(tempfile.mkdtemp(prefix=f"convkit-{self.name}-cnn-"))
        try:
            save_npz_atomic(folder / "weights.npz", {n: np.asarray(weights[n], np.float32) for n in SHAPES})
            request = {"kind": "reference_cnn", "weights": str(folder / "weights.npz"), "folder": str(folder)}
            result = self._call(request, folder, False)
        except BaseException:
            remove(folder)
            raise
        handle = WorkerModel("reference_cnn", LoadOptions(), dict(result["source"]))
        weakref.finalize(handle, remove, folder)
        return handle


class TrainableEnvWorkerFrontend(EnvWorkerFrontend):
    """An ``EnvWorkerFrontend`` whose framework trains the reference CNN (``convkit train``) in its worker."""

    train_timeout_per_epoch = 120.0

    def train_reference_cnn(
        self,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        epochs: int,
        seed: int,
        progress: Callable[[int, int, dict[str, float]], None],
    ) -> dict[str, np.ndarray]:
        """Train the reference CNN from scratch in the worker, in the framework's own idiom; the worker's
        progress lines become ``progress(epoch, epochs, metrics)`` calls; returns canonical weights."""
        from convkit.reference.cnn import SHAPES

        x_train, y_train, x_test, y_test = data
        with self._scratch() as folder:
            workdir = Path(folder)
            save_npz_atomic(
                workdir / "data.npz",
                {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test},
            )
            request = {
                "kind": "train_reference_cnn",
                "data": str(workdir / "data.npz"),
                "epochs": epochs,
                "seed": seed,
                "weights": str(workdir / "weights.npz"),
            }

            def relay(message: Mapping[str, Any]) -> None:
                metrics = {str(k): float(v) for k, v in dict(message.get("metrics") or {}).items()}
                progress(int(message["epoch"]), int(message["epochs"]), metrics)

            timeout = DEFAULT_TIMEOUT_S + self.train_timeout_per_epoch * epochs
            self._call(request, workdir, False, timeout, relay)
            with np.load(workdir / "weights.npz", allow_pickle=False) as archive:
                return {name: archive[name].astype(np.float32) for name in SHAPES}


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """A key for a set of named arrays: names, dtypes, shapes and bytes."""
    sha = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        sha.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        sha.update(value.tobytes())
    return sha.hexdigest()


def load_outputs(path: Path) -> list[np.ndarray]:
    """The worker's ``output_0``, ``output_1`` ... in order (no pickles)."""
    with np.load(path, allow_pickle=False) as archive:
        return [archive[f"output_{k}"] for k in range(len(archive.files))]


def remember(model: WorkerModel, key: str, outputs: list[np.ndarray]) -> None:
    """Keep a few recent results: the same inputs again (the export's example) cost no worker start."""
    model._outputs[key] = outputs
    while len(model._outputs) > REMEMBERED_RESULTS:
        model._outputs.pop(next(iter(model._outputs)))


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
