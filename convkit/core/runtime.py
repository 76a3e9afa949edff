"""The one inference path: onnxruntime sessions on the CPU or CUDA execution provider.

Every feed is checked against the model's inputs before onnxruntime sees it, so a wrong name, dtype or shape
is reported in the user's terms rather than as an onnxruntime status code.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convkit.errors import ConvkitError, DataError, ModelLoadError, ProviderUnavailableError
from convkit.graph.model import UPGRADE_TARGET_OPSET, OnnxModel, upgrade_opset

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
_EP = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")

# onnxruntime's type strings -> numpy dtypes
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


class ModelRunError(ConvkitError):
    """onnxruntime refused to load or run the model with the given data."""

    stage = "runtime"


@dataclass
class TensorSpec:
    """A graph input or output as onnxruntime sees it; symbolic dimensions are strings, unknown ones None."""

    name: str
    dtype: str
    shape: list[int | str | None]

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} ({self.dtype} [{dims}])"


@dataclass
class SessionOptions:
    """How to build a session. ``threads=None`` means one intra-op thread per CPU this process may use.

    ``timeout`` is how many seconds one inference (``RuntimeSession.run``) may take before it is stopped;
    ``None``: no limit.
    """

    provider: str = "auto"
    threads: int | None = None
    optimization: str = "all"
    optimized_model_path: str | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None and not (
            math.isfinite(self.timeout) and 0 < self.timeout <= threading.TIMEOUT_MAX
        ):
            raise ConvkitError(
                f"timeout {self.timeout} is not a number of seconds > 0",
                f"give a finite number of seconds, at most {threading.TIMEOUT_MAX:.0f}",
            )


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers (``CPUExecutionProvider``, ...)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def usable_cpu_count() -> int:
    """CPUs this process may run on (honours affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_providers(choice: str) -> list[str]:
    """Map ``auto``/``cpu``/``cuda`` to onnxruntime provider names, CPU always last as the fallback.

    Raises:
        ProviderUnavailableError: ``cuda`` was asked for and this onnxruntime has no CUDA provider.
    """
    choice = choice.lower()
    if choice not in PROVIDER_CHOICES:
        raise ConvkitError(f"unknown provider {choice!r}", f"choose one of {', '.join(PROVIDER_CHOICES)}")
    available = available_providers()
    has_cuda = _EP["cuda"] in available
    if choice == "cuda" and not has_cuda:
        raise ProviderUnavailableError(
            "the CUDA execution provider is not available in this onnxruntime "
            f"(it offers {', '.join(p.removesuffix('ExecutionProvider') for p in available)})",
            "install onnxruntime-gpu (with CUDA and cuDNN) in place of onnxruntime, or use --provider cpu",
        )
    if choice == "cuda" or (choice == "auto" and has_cuda):
        return [_EP["cuda"], _EP["cpu"]]
    return [_EP["cpu"]]


def short_provider_name(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider").lower()


class RuntimeSession:
    """An onnxruntime session with checked feeds.

    Args:
        model: the loaded model.
        options: provider, threads, optimization level.
        static_shapes: input shapes to pin when an old-opset model must be upgraded and its symbolic
            dimensions stop the version converter (see ``upgrade_opset``).
    """

    def __init__(
        self,
        model: OnnxModel,
        options: SessionOptions | None = None,
        static_shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.model = model
        self.options = options or SessionOptions()
        self.notes: list[str] = []
        self.opset = model.opset
        providers = resolve_providers(self.options.provider)
        ort.set_default_logger_severity(3)
        try:
            if model.light:
                # NOTE: why the proto when its weights were left in the file: onnxruntime then reads each
                # weight from the file once, where parsing the file copies them all first (BERT-base:
                # 0.33 GiB more at the session's peak, the outputs identical)
                self._session = self._create(model.proto.SerializeToString(), providers, model.path.parent)
            else:
                self._session = self._create(str(model.path), providers)
        except Exception as exc:
            if "NOT_IMPLEMENTED" not in str(exc) or model.opset >= UPGRADE_TARGET_OPSET:
                raise _load_error(model, exc) from exc
            self._session = self._create_upgraded(model, providers, static_shapes, exc)
        self.provider = self._session.get_providers()[0]
        if self.options.provider == "cuda" and self.provider != _EP["cuda"]:
            raise ProviderUnavailableError(
                "onnxruntime lists the CUDA execution provider but could not start it (CUDA or cuDNN "
                "libraries missing or mismatched)",
                "check `nvidia-smi` and the CUDA/cuDNN versions onnxruntime-gpu needs, or use --provider cpu",
            )
        if self.options.provider == "auto" and _EP["cuda"] in providers and self.provider != _EP["cuda"]:
            self.notes.append("the CUDA execution provider failed to start; ran on the CPU")
        self.inputs = [_spec(arg) for arg in self._session.get_inputs()]
        self.outputs = [_spec(arg) for arg in self._session.get_outputs()]

    def _create(self, model: str | bytes, providers: list[str], folder: Path | None = None) -> Any:
        """A session on a file, or on a model's bytes whose external data lie in ``folder``."""
        import onnxruntime as ort

        options = ort_session_options(self.options)
        if folder is not None:
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(folder)
            )
        return ort.InferenceSession(model, sess_options=options, providers=providers)

    def _create_upgraded(
        self,
        model: OnnxModel,
        providers: list[str],
        static_shapes: dict[str, tuple[int, ...]] | None,
        original: Exception,
    ) -> Any:
        import onnx

        proto = model.proto
        if model.external_files:
            proto = onnx.load(str(model.path))  # pulls external tensors in; upgrades are in memory
        upgraded = upgrade_opset(proto, UPGRADE_TARGET_OPSET, static_shapes)
        try:
            session = self._create(upgraded.SerializeToString(), providers)
        except Exception as exc:
            raise _load_error(model, exc) from original
        missing = _first_line(str(original)).split("implementation for ")[-1].split(" node")[0]
        self.notes.append(
            f"the model's opset {model.opset} operators are no longer implemented by onnxruntime "
            f"({missing}); upgraded in memory to opset {UPGRADE_TARGET_OPSET} with onnx's version converter"
        )
        self.opset = UPGRADE_TARGET_OPSET
        return session

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate names, dtypes and shapes; return the feeds as arrays. Raises ``DataError``."""
        expected = {spec.name: spec for spec in self.inputs}
        unknown = [name for name in feeds if name not in expected]
        missing = [name for name in expected if name not in feeds]
        listing = "; ".join(spec.describe() for spec in self.inputs)
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown input(s) {', '.join(unknown)}")
            raise DataError(
                f"the data does not match {self.model.path.name}: {' and '.join(parts)}",
                f"the model takes: {listing}",
            )
        arrays: dict[str, np.ndarray] = {}
        for name, value in feeds.items():
            spec = expected[name]
            array = np.asarray(value)
            if array.dtype.name != spec.dtype and not (spec.dtype == "object" and array.dtype.kind in "OUS"):
                raise DataError(
                    f"input {name!r} is {array.dtype.name} but the model takes {spec.dtype}",
                    f"cast it, e.g. array.astype('{spec.dtype}')",
                )
            _check_shape(spec, array.shape)
            arrays[name] = array
        return arrays

    def bind(self, feeds: Mapping[str, Any]) -> Callable[[], list[Any]]:
        """A zero-argument call that runs the model on ``feeds`` (checked once, here): for benchmarks."""
        arrays = self.check_feeds(feeds)
        session = self._session
        return lambda: session.run(None, arrays)

    def run(
        self, feeds: Mapping[str, Any], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model; returns outputs by name, in the model's output order.

        The inference stops after ``options.timeout`` seconds, and on Ctrl-C or SIGTERM (see
        ``run_stoppable``).

        Raises:
            DataError: the feeds do not fit the model's inputs.
            ModelRunError: onnxruntime failed, or did not finish within the timeout.
        """
        arrays = self.check_feeds(feeds)
        names = list(output_names) if output_names else [spec.name for spec in self.outputs]
        try:
            values = run_stoppable(self._session, names, arrays, self.options.timeout)
        except InferenceTimeout as exc:
            raise ModelRunError(
                f"{self.model.path.name} did not finish within {exc.seconds:g} s in onnxruntime; stopped it",
                "a Loop whose condition never turns false runs forever; if the model is just slow, "
                "raise --timeout",
            ) from None
        except Exception as exc:
            raise ModelRunError(
                f"onnxruntime failed to run {self.model.path.name}: {_first_line(str(exc))}",
                "check the input shapes against `convkit inspect`",
            ) from exc
        return dict(zip(names, values, strict=True))


_WAIT_SLICE = 0.25
"""Seconds between two looks at a running inference (see ``run_stoppable``)."""


class InferenceTimeout(Exception):
    """``run_stoppable`` stopped an inference that ran past its timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the inference did not finish within {seconds:g} s")
        self.seconds = seconds


def run_stoppable(
    session: Any, names: Sequence[str] | None, feeds: Mapping[str, Any], timeout: float | None = None
) -> list[Any]:
    """``session.run(names, feeds)``, stopped after ``timeout`` seconds or when the caller is interrupted.

    NOTE: why a helper thread runs the inference and this one waits: Python runs signal handlers in the
    main thread only, between bytecodes, so a main thread inside ``session.run`` (a Loop that never ends)
    ignores Ctrl-C and SIGTERM until onnxruntime returns, which it may never do. A waiting main thread
    takes the signal at once; it then sets onnxruntime's ``RunOptions.terminate`` (checked between nodes and
    Loop iterations), waits for the run to stop and lets the interrupt go on. The timeout is the same flag,
    set when the wait runs out, so no timer thread is needed.

    Args:
        session: an ``onnxruntime.InferenceSession``.
        names: the outputs to compute (``None``: all).
        feeds: the inputs by name, already checked.
        timeout: seconds before the run is stopped; ``None``: no limit.

    Returns:
        The outputs, as ``session.run`` returns them.

    Raises:
        InferenceTimeout: the run did not finish within ``timeout``.
        Exception: whatever ``session.run`` raised.
    """
    import onnxruntime as ort

    run_options = ort.RunOptions()
    # NOTE: why silent: a failed run comes back as an exception that convkit reports in one line; the
    # logger's copy of it would be a second, raw one on stderr
    run_options.log_severity_level = 4
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def work() -> None:
        try:
            outcome["values"] = session.run(names, feeds, run_options)
        except BaseException as exc:  # handed to the waiting thread, which raises it
            outcome["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=work, name="convkit-inference", daemon=True).start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        # NOTE: why in slices: a signal the kernel hands to another thread does not wake this wait; each
        # return to Python runs the handlers that are due
        while not finished.is_set():
            remaining = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            finished.wait(min(_WAIT_SLICE, remaining))
    except BaseException:
        run_options.terminate = True
        finished.wait()
        raise
    if not finished.is_set():
        run_options.terminate = True
        finished.wait()
        if "values" not in outcome:
            raise InferenceTimeout(timeout or 0.0)
    if "error" in outcome:
        raise outcome["error"]
    return list(outcome["values"])


def ort_session_options(options: SessionOptions) -> Any:
    """onnxruntime ``SessionOptions`` for ``options``: optimization level, threads, quiet logging."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    # NOTE: why fatal only: every error onnxruntime logs also comes back as the exception that convkit
    # reports in one line; the logger's copy was a second, raw one on stderr (and a CUDA provider that
    # fails to start is reported as a note)
    so.log_severity_level = 4
    level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.optimization]
    so.graph_optimization_level = level
    # NOTE: why an explicit thread count: with the default (0) onnxruntime pinned its worker to one CPU
    # on this project's 2-vCPU machines (sched_getaffinity -> [1]); an explicit count did not.
    so.intra_op_num_threads = options.threads or usable_cpu_count()
    so.inter_op_num_threads = 1
    if options.optimized_model_path:
        so.optimized_model_filepath = options.optimized_model_path
    return so


def _spec(arg: Any) -> TensorSpec:
    shape = arg.shape if isinstance(arg.shape, list) else []
    return TensorSpec(name=arg.name, dtype=_ORT_DTYPES.get(arg.type, arg.type), shape=list(shape))


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    if not spec.shape and not shape:
        return
    if len(spec.shape) != len(shape):
        raise DataError(
            f"input {spec.name!r} has shape {tuple(shape)} (rank {len(shape)}) but the model takes "
            f"rank {len(spec.shape)}: {spec.describe()}",
            "reshape the data",
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if isinstance(want, int) and want > 0 and want != got:
            raise DataError(
                f"input {spec.name!r} has shape {tuple(shape)} but the model takes {spec.describe()}: "
                f"dimension {axis} must be {want}",
                "reshape the data",
            )


def _first_line(text: str) -> str:
    text = text.strip()
    line = text.splitlines()[0] if text else ""
    marker = "[ONNXRuntimeError] : "
    if marker not in line:
        return line
    # NOTE: why the last marker: a load failure nests the status that caused it after a C++ location and
    # signature ("Exception during initialization: .../initializer.cc:51 onnxruntime::Initializer(...)
    # [ONNXRuntimeError] : 1 : FAIL : ..."); the innermost one says what is wrong with the model
    return line.rsplit(marker, 1)[-1].split(" : ", 1)[-1]


def _load_error(model: OnnxModel, exc: Exception) -> ConvkitError:
    message = _first_line(str(exc))
    if "NOT_IMPLEMENTED" in str(exc) or "not implemented" in message.lower():
        from convkit.errors import UnsupportedModelError

        return UnsupportedModelError(
            f"onnxruntime cannot run {model.path.name}: {message}",
            "the op or type has no kernel on this execution provider; try another opset or provider",
        )
    return ModelLoadError(f"onnxruntime cannot load {model.path.name}: {message}")
