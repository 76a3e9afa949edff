"""The one inference path: onnxruntime sessions on the CPU or CUDA execution provider.

Every feed is checked against the model's inputs before onnxruntime sees it, so a wrong name, dtype or shape
is reported in the user's terms rather than as an onnxruntime status code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    """How to build a session. ``threads=None`` means one intra-op thread per CPU this process may use."""

    provider: str = "auto"
    threads: int | None = None
    optimization: str = "all"
    optimized_model_path: str | None = None


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

    def _create(self, model: str | bytes, providers: list[str]) -> Any:
        import onnxruntime as ort

        return ort.InferenceSession(
            model, sess_options=ort_session_options(self.options), providers=providers
        )

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
        """Run the model; returns outputs by name, in the model's output order."""
        arrays = self.check_feeds(feeds)
        names = list(output_names) if output_names else [spec.name for spec in self.outputs]
        try:
            values = self._session.run(names, arrays)
        except Exception as exc:
            raise ModelRunError(
                f"onnxruntime failed to run {self.model.path.name}: {_first_line(str(exc))}",
                "check the input shapes against `convkit inspect`",
            ) from exc
        return dict(zip(names, values, strict=True))


def ort_session_options(options: SessionOptions) -> Any:
    """onnxruntime ``SessionOptions`` for ``options``: optimization level, threads, quiet logging."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
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
    return line.split(" : ", 2)[-1] if line.startswith("[ONNXRuntimeError]") else line


def _load_error(model: OnnxModel, exc: Exception) -> ConvkitError:
    message = _first_line(str(exc))
    if "NOT_IMPLEMENTED" in str(exc) or "not implemented" in message.lower():
        from convkit.errors import UnsupportedModelError

        return UnsupportedModelError(
            f"onnxruntime cannot run {model.path.name}: {message}",
            "the op or type has no kernel on this execution provider; try another opset or provider",
        )
    return ModelLoadError(f"onnxruntime cannot load {model.path.name}: {message}")
