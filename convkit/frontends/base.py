"""The front-end protocol: what every framework provides. Small on purpose; change it rarely.

A front end loads a model, exports it to ONNX and runs it natively for reference outputs. Everything after
that (the runtime, the comparison, reports, artifacts, the CLI) is shared. What only some front ends can do
is a capability Protocol of its own (``HasReferenceCNN``, ``Trainable``, ``LayerPairing``,
``Benchmarkable``, ``Releasable``, ``Isolated``): the core asks ``isinstance(frontend, Trainable)``, and mypy
sees the methods it then calls.

NOTE: why no numpy import at run time: ``convkit --help`` imports the registry, which imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from convkit.core.inputs import InputSpec


@dataclass
class LoadOptions:
    """How to load a source.

    Attributes:
        weights: a checkpoint to load into the model (a state dict / weights file), safely.
        unsafe_pickle: allow loading formats that execute code (whole pickled models, Keras Lambda layers).
            Off by default; the CLI names it ``--unsafe-allow-pickle`` so the risk is plain.
    """

    weights: str | None = None
    unsafe_pickle: bool = False
    verbose: bool = False


@dataclass
class ExportOptions:
    """How to export. ``exporter=None`` lets the front end choose (and fall back)."""

    opset: int | None = None
    exporter: str | None = None
    verbose: bool = False


@dataclass
class ExportResult:
    """What an exporter did: which path it took, the opset written, and anything the user should know."""

    exporter: str
    opset: int
    notes: list[str] = field(default_factory=list)


class Frontend(Protocol):
    """One framework. Implementations import their framework inside methods, never at module level; what
    identifies the framework (aliases, packages, how to install it) is its ``FrontendInfo`` in the
    registry (``convkit.frontends``)."""

    name: str

    def is_available(self) -> str | None:
        """``None`` when the framework imports here, else the reason it does not."""
        ...

    def versions(self) -> dict[str, str]:
        """Versions of the framework packages involved (for manifests and reports)."""
        ...

    def claims_path(self, path: Path) -> bool:
        """Whether a model file or folder is in this framework's format (``.pt2``, ``.keras`` ...)."""
        ...

    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> Any:
        """Load ``source`` in inference mode. ``preloaded`` is the object a ``module:factory`` returned."""
        ...

    def input_specs(self, model: Any) -> list[InputSpec] | None:
        """Input names and shapes the model declares itself, or ``None`` when it declares none."""
        ...

    def input_names(self, model: Any) -> list[str] | None:
        """The names the model's inputs are known by (``forward`` parameters ...), when they can be read."""
        ...

    def export(
        self,
        model: Any,
        specs: Sequence[InputSpec],
        example: Mapping[str, np.ndarray],
        path: Path,
        options: ExportOptions,
    ) -> ExportResult:
        """Write an ONNX model to ``path`` whose inputs are named and shaped after ``specs``
        (string dims symbolic) and whose outputs are in the framework's output order."""
        ...

    def run(self, model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model natively (inference mode, no gradients); outputs flattened in order."""
        ...


@runtime_checkable
class HasReferenceCNN(Protocol):
    """Builds the founding document's reference CNN from canonical weights (``convkit matrix``)."""

    reference_layout: str
    """``NCHW`` or ``NHWC``: the layout of the model's input ``x``."""

    def reference_cnn(self, weights: Mapping[str, np.ndarray]) -> Any:
        """The reference CNN in inference mode, carrying canonical weights (see ``convkit.reference.cnn``)."""
        ...


@runtime_checkable
class Trainable(HasReferenceCNN, Protocol):
    """Also trains the reference CNN in the framework's own idiom (``convkit train``)."""

    def train_reference_cnn(
        self,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        epochs: int,
        seed: int,
        progress: Callable[[int, int, dict[str, float]], None],
    ) -> dict[str, np.ndarray]:
        """Train from scratch on ``(x_train, y_train, x_test, y_test)`` (NCHW images, int labels); call
        ``progress(epoch, epochs, metrics)`` after each epoch; return canonical weights."""
        ...


@runtime_checkable
class Benchmarkable(Protocol):
    """Offers its own runners to ``convkit bench``."""

    def benchmark_runners(self, model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
        """Zero-argument calls running the model natively, by contender name (``torch eager`` ...)."""
        ...


@runtime_checkable
class Releasable(Protocol):
    """Can free the weights of a model convkit loaded itself once the framework's part is done."""

    def release(self, model: Any) -> None:
        """Free ``model``'s weights (it is unusable afterwards): export and verify call it before onnxruntime
        loads the ONNX model, so the two never hold their weights together."""
        ...


@runtime_checkable
class Isolated(Protocol):
    """Runs its framework in another process: ``module:factory`` sources are imported there, not here."""

    isolated: bool


@dataclass
class LayerOutput:
    """One framework module's or layer's activation, paired with the ONNX value that should equal it."""

    layer: str
    """The module path (``encoder.layers.0.attn``) or Keras layer name."""
    onnx_value: str
    """The name of the ONNX graph value holding the same tensor (same layout)."""
    value: np.ndarray
    """The framework's own activation, converted to that value's layout."""


@runtime_checkable
class LayerPairing(Protocol):
    """Pairs its layers with ONNX values, for ``verify --localize`` against the framework."""

    def layer_outputs(
        self, model: Any, onnx_model: Any, inputs: Mapping[str, np.ndarray]
    ) -> list[LayerOutput]:
        """The framework's activations for ``inputs``, in execution order, each paired with the ONNX value
        (of ``onnx_model``, an ``onnx.ModelProto`` exported from ``model``) that computes the same tensor.
        Layers without a clear ONNX counterpart are left out."""
        ...
