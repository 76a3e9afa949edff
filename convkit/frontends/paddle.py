"""The PaddlePaddle front end: ``paddle.nn.Layer`` factories and saved inference models, exported with
paddle2onnx, all of it in the PaddlePaddle environment (``convkit env create paddle``), driven as a worker.

NOTE: why a worker and not an import: paddle2onnx requires onnx<=1.17 (the core pins 1.23), and Paddle
cannot share a process with TensorFlow (``import tensorflow; import paddle`` is a segfault). The core keeps a
``PaddleModel`` handle, a description of what to load, and each job (run, export, build or train the
reference CNN) is one request to ``convkit/workers/paddle_worker.py`` run by the environment's Python.
paddle is never imported here.

Sources: ``path/to/file.py:factory`` or ``package.module:factory`` (with ``--framework paddle``: the
factory is imported in the worker, so its framework cannot be inferred here), and a saved inference model
(``paddle.jit.save``'s ``model.json`` or ``model.pdmodel`` with ``model.pdiparams``): its folder, one of its
files, or its path prefix.
"""

from __future__ import annotations

import tempfile
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convkit.artifacts import save_npz_atomic
from convkit.errors import DataError, ExportError, InputFileError
from convkit.frontends.base import ExportOptions, ExportResult, LoadOptions
from convkit.frontends.worker_frontend import (
    WorkerFrontend,
    WorkerModel,
    digest,
    remember,
    remove,
)
from convkit.inputs import InputSpec

ENV = "paddle"
WORKER_SCRIPT = Path(__file__).resolve().parent.parent / "workers" / "paddle_worker.py"
_PROGRAM_SUFFIXES = (".json", ".pdmodel")
_PARAMS_SUFFIX = ".pdiparams"
# seconds per request kind (CONVKIT_WORKER_TIMEOUT overrides them all)
_TIMEOUTS = {"describe": 300.0, "run": 300.0, "export": 600.0, "reference_cnn": 300.0}
_TRAIN_TIMEOUT_PER_EPOCH = 120.0
# NOTE: why these: Paddle logs through glog from C++ (executor banners, warnings) and Python warnings at
# import; a quiet worker keeps them off the user's terminal (its stderr is kept for errors and --verbose).
_QUIET_ENV = {"GLOG_minloglevel": "2", "GLOG_v": "0", "PYTHONWARNINGS": "ignore"}
# NOTE: why: paddle2onnx sets POLYGRAPHY_AUTOINSTALL_DEPS=1 before Polygraphy runs, which pip-installs
# onnxruntime at export time; the worker never runs Polygraphy, and this keeps it from installing anything.
_WORKER_ENV = {"POLYGRAPHY_AUTOINSTALL_DEPS": "0"}


class PaddleModel(WorkerModel):
    """A handle on a Paddle model that lives in the worker (``spec["kind"]``: ``factory`` or
    ``inference``)."""


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


class PaddleFrontend(WorkerFrontend):
    """PaddlePaddle through its own environment: factories (``--framework paddle``) and saved inference
    models, exported with paddle2onnx, run by Paddle itself for the reference outputs."""

    name = "paddle"
    aliases: tuple[str, ...] = ("paddlepaddle",)
    extra = "paddle"
    install_command = f"convkit env create {ENV}"
    """What makes this front end available (``convkit doctor`` and errors print it instead of a pip extra)."""

    # ----------------------------------------------------------------------------------------------- setup
    def is_available(self) -> str | None:
        """``None`` when the PaddlePaddle environment is created and current, else why not (with the
        command that creates it)."""
        from convkit.envs import unavailable_reason

        if not WORKER_SCRIPT.is_file():
            return f"the worker script {WORKER_SCRIPT} is missing"
        return unavailable_reason(ENV)

    def versions(self) -> dict[str, str]:
        """paddle, paddle2onnx and the environment's onnx, read from its metadata (no process started)."""
        from convkit.envs import env_packages

        installed = env_packages(ENV)
        names = {"paddle": "paddlepaddle", "paddle2onnx": "paddle2onnx", "onnx (paddle env)": "onnx"}
        return {key: installed[dist] for key, dist in names.items() if dist in installed}

    def claims_path(self, path: Path) -> bool:
        """A saved inference model: a folder with ``*.json``/``*.pdmodel`` + ``*.pdiparams``, or its files."""
        return inference_model_files(path) is not None

    # ------------------------------------------------------------------------------------------------ worker
    def _call(
        self,
        request: dict[str, Any],
        workdir: Path,
        verbose: bool,
        timeout: float | None = None,
        progress: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        from convkit.envs import require_env
        from convkit.workers import Worker, call_worker, default_timeout

        worker = Worker(self.name, require_env(ENV), WORKER_SCRIPT, dict(_WORKER_ENV), dict(_QUIET_ENV))
        seconds = default_timeout(timeout or _TIMEOUTS[request["kind"]])
        return call_worker(worker, request, workdir, seconds, verbose, progress)

    # ------------------------------------------------------------------------------------------------ load
    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> PaddleModel:
        """A handle on ``source``, checked here without starting Paddle: the factory's file or the saved
        model's files must exist. Paddle loads it in the worker at each request; a factory's weights are
        those of the handle's first request (kept in a temporary snapshot), so that every request on one
        handle sees one model even when the factory does not seed its initialisation.

        Raises:
            InputFileError: the file is missing, or the path is no Paddle inference model.
        """
        from convkit.sources import is_factory_source

        weights = str(Path(options.weights).absolute()) if options.weights else None
        if weights is not None and not Path(weights).is_file():
            raise InputFileError(f"weights file {options.weights} does not exist", "check --weights")
        if is_factory_source(source):
            module, _, attr = source.rpartition(":")
            if module.endswith(".py"):
                if not Path(module).is_file():
                    raise InputFileError(
                        f"source file {module} does not exist", "check the path before the ':'"
                    )
                module = str(Path(module).absolute())
            folder = Path(tempfile.mkdtemp(prefix="convkit-paddle-model-"))
            spec = {
                "kind": "factory",
                "source": f"{module}:{attr}",
                "weights": weights,
                "unsafe_pickle": options.unsafe_pickle,
                "snapshot": str(folder / "weights.npz"),
            }
            handle = PaddleModel(source, options, spec)
            weakref.finalize(handle, remove, folder)
            return handle
        files = inference_model_files(Path(source))
        if files is None:
            raise InputFileError(
                f"{source} is not a Paddle inference model"
                if Path(source).exists()
                else f"model {source} does not exist",
                "give a folder saved by paddle.jit.save (model.json or model.pdmodel + model.pdiparams), "
                "or path/to/file.py:factory",
            )
        if weights is not None:
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
        return PaddleModel(source, options, spec)

    # --------------------------------------------------------------------------------------------- export
    def export(
        self,
        model: PaddleModel,
        specs: Sequence[InputSpec],
        example: Mapping[str, np.ndarray],
        path: Path,
        options: ExportOptions,
    ) -> ExportResult:
        """Export with paddle2onnx (factories through ``paddle.jit.save`` first) to ``path``: inputs named
        and shaped after ``specs``, outputs named ``output`` / ``output_N``, weights as initializers named
        after the layer's ``state_dict`` (``fc1.weight``).

        Raises:
            ExportError: paddle.jit.save or paddle2onnx failed, or the model fixed a dimension meant to be
                dynamic.
        """
        from convkit.workers.finish import finish_model

        if options.exporter not in (None, "paddle2onnx"):
            raise ExportError(
                f"unknown exporter {options.exporter!r} for paddle", "use paddle2onnx or omit it"
            )
        verbose = options.verbose or model.options.verbose
        with tempfile.TemporaryDirectory(prefix="convkit-paddle-") as folder:
            workdir = Path(folder)
            result, reference = self._export_in_worker(model, specs, example, options.opset, workdir, verbose)
            opset, notes = finish_model(
                workdir / "exported.onnx",
                Path(path),
                specs,
                result.get("param_names") or {},
                "paddle2onnx",
                options.opset,
                result.get("exporter_version"),
            )
        remember(model, digest(example), reference)
        return ExportResult("paddle2onnx", opset, notes)

    # ------------------------------------------------------------------ reference CNN (convkit matrix, train)
    # NOTE: why NCHW: Paddle's Conv2D is channels-first like PyTorch's, so canonical weights need only the
    # dense kernels transposed (Paddle's Linear stores (in, out)).
    reference_layout = "NCHW"

    def reference_cnn(self, weights: Mapping[str, np.ndarray]) -> PaddleModel:
        """The reference CNN carrying canonical ``weights``, saved by the worker as an inference model in a
        temporary folder that lives as long as the returned handle: input ``x`` (batch, 1, 28, 28)."""
        from convkit.reference_cnn import SHAPES

        wrong = [n for n, s in SHAPES.items() if n not in weights or tuple(np.shape(weights[n])) != s]
        if wrong:
            raise DataError(f"reference-CNN weights missing or misshapen: {', '.join(wrong)}")
        folder = Path(tempfile.mkdtemp(prefix="convkit-paddle-cnn-"))
        try:
            save_npz_atomic(folder / "weights.npz", {n: np.asarray(weights[n], np.float32) for n in SHAPES})
            request = {"kind": "reference_cnn", "weights": str(folder / "weights.npz"), "folder": str(folder)}
            result = self._call(request, folder, False)
        except BaseException:
            remove(folder)
            raise
        spec = {"kind": "inference", **{k: result[k] for k in ("prefix", "model_file", "params_file")}}
        handle = PaddleModel("reference_cnn", LoadOptions(), spec)
        weakref.finalize(handle, remove, folder)
        return handle

    def train_reference_cnn(
        self,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        epochs: int,
        seed: int,
        progress: Callable[[int, int, dict[str, float]], None],
    ) -> dict[str, np.ndarray]:
        """Train the reference CNN from scratch in the worker, the Paddle way (``paddle.io.DataLoader``,
        ``paddle.optimizer.Adam`` at 1e-3, batches of 32, dropout active, ``paddle.seed``); the worker's
        progress lines become ``progress(epoch, epochs, metrics)`` calls; returns canonical weights."""
        from convkit.reference_cnn import SHAPES

        x_train, y_train, x_test, y_test = data
        with tempfile.TemporaryDirectory(prefix="convkit-paddle-train-") as folder:
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

            timeout = 300.0 + _TRAIN_TIMEOUT_PER_EPOCH * epochs
            self._call(request, workdir, False, timeout, relay)
            with np.load(workdir / "weights.npz", allow_pickle=False) as archive:
                return {name: archive[name].astype(np.float32) for name in SHAPES}
