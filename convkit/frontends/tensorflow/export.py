"""Export for the TensorFlow front end: tf2onnx, its opsets, output names, the large-model path, and the
errors that say why an export failed.

NOTE: why every export traces a ``tf.function`` of our own (converted step by step in ``convert``) rather
than going through ``from_keras``: one path serves functional, Sequential and subclassed models and SavedModel
signatures alike (``from_keras`` takes only Keras models, and without a signature reads ``model.inputs``,
which subclassed models lack); the input signature comes from the specs (names, static and symbolic dims),
and the call and the output order are the same code that ``run`` uses for the reference outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convkit.core.inputs import InputSpec
from convkit.errors import ConvkitError, ExportError, UnsupportedModelError
from convkit.frontends._quiet import Quiet
from convkit.frontends.base import ExportOptions, ExportResult
from convkit.frontends.tensorflow import convert, dynamic
from convkit.frontends.tensorflow._common import (
    SavedModelSignature,
    call_model,
    dtype_name,
    first_line,
    flatten,
    import_tf,
    run,
)
from convkit.graph import conform as conform_module
from convkit.graph.conform import conform, save
from convkit.graph.names import subgraphs

if TYPE_CHECKING:
    import onnx

# NOTE: why 17: the newest opset that tf2onnx 1.17 (at most 18) and every current onnxruntime implement in
# full, and the opset of convkit's own fixtures; tf2onnx's own default (15) is older than it needs to be.
DEFAULT_OPSET = 17
# NOTE: why 7: the oldest opset onnxruntime runs; the fixtures export there too, but a model written at an
# opset onnxruntime has no kernels for would only fail later.
MIN_OPSET = 7
EXPORTER = "tf2onnx"
_PLACEHOLDER = "convkit_input_{}"


def export(
    model: Any,
    specs: Sequence[InputSpec],
    example: Mapping[str, np.ndarray],
    path: Path,
    options: ExportOptions,
) -> ExportResult:
    """Export with tf2onnx.

    Args:
        model: what the front end's ``load`` returned.
        specs: the inputs, named and shaped as the ONNX model's (string dims symbolic).
        example: input data; a subclassed model not yet built is called once on it.
        path: the ``.onnx`` file to write (large models get their weights in a file beside it).
        options: the opset (default ``DEFAULT_OPSET``), the exporter (only ``tf2onnx``) and verbosity.

    Returns:
        The exporter and opset used, and notes for the user. Outputs are named after the Keras outputs
        (``output``/``output_N`` where Keras has no names).

    Raises:
        UnsupportedModelError: an opset tf2onnx cannot write, or TensorFlow ops without ONNX equivalent.
        ExportError: tf2onnx failed; its last log lines are in the hint.
    """
    tf, _ = import_tf(options.verbose)
    opset = _check_options(options)
    with Quiet(options.verbose):
        import tf2onnx
    notes: list[str] = []
    if not isinstance(model, SavedModelSignature) and not getattr(model, "built", True):
        # NOTE: why: a subclassed model has no weights until first called; creating them inside the
        # traced function would fail, so it is called once, eagerly, on the example data.
        run(model, example)
        notes.append("built the subclassed model by calling it once on the example inputs")
    specs, kept = dynamic.settle(model, specs)
    notes.extend(kept)
    signature = [
        tf.TensorSpec(
            [d if isinstance(d, int) else None for d in spec.dims],
            tf.as_dtype(spec.dtype),
            name=_PLACEHOLDER.format(k),
        )
        for k, spec in enumerate(specs)
    ]
    names = [spec.name for spec in specs]
    traced_keys: list[str | None] = []

    def call(*args: Any) -> tuple[Any, ...]:
        flat = flatten(call_model(model, dict(zip(names, args, strict=True))))
        traced_keys[:] = [key for key, _ in flat]
        return tuple(value for _, value in flat)

    large = _weight_bytes(model) > conform_module.EXTERNAL_DATA_THRESHOLD
    capture = Quiet(options.verbose)
    try:
        with capture, _numpy_product_shim():
            proto, storage = convert.convert(call, signature, opset, large)
    except ConvkitError:
        raise
    except Exception as exc:
        raise ExportError(
            f"exporting with tf2onnx failed: {type(exc).__name__}: {first_line(exc)}",
            capture.tail() or "rerun with --verbose to see tf2onnx's log",
        ) from exc
    _check_converted(proto, opset, capture, model)
    outputs = _output_names(model, traced_keys, names)
    label = model.path.name if isinstance(model, SavedModelSignature) else getattr(model, "name", "model")
    proto.graph.name = str(label)
    notes.extend(
        conform(
            proto,
            specs,
            exporter="tf2onnx",
            input_names={_PLACEHOLDER.format(k): spec.name for k, spec in enumerate(specs)},
            output_names=outputs,
            batch_leads_outputs=True,
        )
    )
    # NOTE: why tf2onnx's storage: on its large-model path it keeps the tensors' bytes aside
    side_data = dict(storage.name_to_tensor_data) if large and storage is not None else None
    data_name = save(proto, path, side_data)
    if data_name:
        notes.append(f"a large model: its weights are in {data_name}, which must stay beside it")
    return ExportResult(exporter=f"{EXPORTER} {tf2onnx.__version__}", opset=opset, notes=notes)


# ---------------------------------------------------------------------- output names


def _output_names(model: Any, keys: Sequence[str | None], input_names: Sequence[str]) -> list[str]:
    """Dict keys when outputs are a dict, else the Keras output names, else ``output``/``output_N``;
    unique, and distinct from the input names."""
    count = len(keys)
    names: list[str] | None = None
    if count and all(keys):
        names = [str(key) for key in keys]
    elif not isinstance(model, SavedModelSignature):
        keras_names = _keras_output_names(model)
        if keras_names is not None and len(keras_names) == count:
            names = keras_names
    if names is None:
        names = ["output"] if count == 1 else [f"output_{k}" for k in range(count)]
    taken = set(input_names)
    unique = []
    for name in names:
        candidate, n = name, 1
        while candidate in taken:
            candidate, n = f"{name}_{n}", n + 1
        taken.add(candidate)
        unique.append(candidate)
    return unique


def _keras_output_names(model: Any) -> list[str] | None:
    try:
        import keras

        if isinstance(model, keras.Sequential) and model.layers:
            return [model.layers[-1].name]
        names = getattr(model, "output_names", None)
    except Exception:  # a property that raises on an unbuilt model
        return None
    return [str(name) for name in names] if names else None


# ---------------------------------------------------------------------- checks around tf2onnx


def _weight_bytes(model: Any) -> int:
    if isinstance(model, SavedModelSignature):
        return sum(f.stat().st_size for f in (model.path / "variables").glob("*") if f.is_file())
    total = 0
    for weight in getattr(model, "weights", None) or getattr(model, "variables", []):
        try:
            itemsize = np.dtype(dtype_name(weight.dtype)).itemsize
        except TypeError:  # bfloat16 and other dtypes NumPy does not know
            itemsize = 4
        total += int(np.prod(weight.shape)) * itemsize
    return total


def _check_options(options: ExportOptions) -> int:
    """The opset to write; raises for an opset or exporter this front end cannot honour."""
    with Quiet(options.verbose):
        import tf2onnx
        import tf2onnx.constants

    if options.exporter not in (None, EXPORTER):
        raise ExportError(
            f"unknown exporter {options.exporter!r} for the tensorflow front end",
            f"it exports with {EXPORTER}; omit --exporter or pass --exporter {EXPORTER}",
        )
    highest = max(tf2onnx.constants.OPSET_TO_IR_VERSION)
    opset = DEFAULT_OPSET if options.opset is None else options.opset
    if not MIN_OPSET <= opset <= highest:
        raise UnsupportedModelError(
            f"cannot export at opset {opset}: tf2onnx {tf2onnx.__version__} writes opsets up to {highest}, "
            f"and onnxruntime runs {MIN_OPSET} and later",
            f"pass --opset {highest if opset > highest else MIN_OPSET} or "
            f"{'lower' if opset > highest else 'higher'}, or omit --opset for {DEFAULT_OPSET}",
        )
    return opset


@contextlib.contextmanager
def _numpy_product_shim() -> Iterator[None]:
    """Provide ``np.product`` while tf2onnx runs.

    NOTE: why: tf2onnx 1.17's large-model path (external tensors, for models past 2 GB) still calls
    ``np.product``, which NumPy 2 removed; without it such exports die with an AttributeError.
    """
    missing = not hasattr(np, "product")
    if missing:
        np.product = np.prod  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if missing:
            del np.product  # type: ignore[attr-defined]


def _check_converted(proto: onnx.ModelProto, opset: int, capture: Quiet, model: Any) -> None:
    """Raise when tf2onnx left TensorFlow ops in the graph.

    NOTE: why: tf2onnx converts with ``continue_on_error`` and only logs ops it cannot map; the model it
    returns then fails later, in onnxruntime, with a message that does not say why.
    """
    import onnx

    unknown: dict[str, int] = {}
    for graph in subgraphs(proto.graph):
        for node in graph.node:
            domain = node.domain if node.domain not in ("ai.onnx",) else ""
            if not onnx.defs.has(node.op_type, domain):
                label = node.op_type if not domain else f"{domain}.{node.op_type}"
                unknown[label] = unknown.get(label, 0) + 1
    if unknown:
        listing = ", ".join(f"{op} (x{n})" if n > 1 else op for op, n in sorted(unknown.items()))
        raise UnsupportedModelError(
            f"tf2onnx could not convert these TensorFlow ops to ONNX opset {opset}: {listing}",
            _unconverted_hint(sorted(unknown), opset, capture, model),
        )


def _unconverted_hint(ops: Sequence[str], opset: int, capture: Quiet, model: Any) -> str:
    """What to do about ops tf2onnx left unconverted: an opset it converts them at, if it writes one;
    Keras's JAX backend for a Keras model; replacing the layers.

    NOTE: why the opset is named only when it helps: tf2onnx writes opsets up to 18, and most ops it lacks
    it lacks at every opset, where "try a newer --opset" sends the user in a circle.
    """
    import tf2onnx
    import tf2onnx.constants

    highest = max(tf2onnx.constants.OPSET_TO_IR_VERSION)
    since = {op: convert.handled_from(op) for op in ops}
    missing = [op for op, version in since.items() if version is None or version > highest]
    failed = [op for op, version in since.items() if version is not None and version <= opset]
    later = [version for version in since.values() if version is not None and opset < version <= highest]
    ways: list[str] = []
    if later and not missing and not failed:
        ways.append(f"pass --opset {max(later)} (tf2onnx converts them from that opset)")
    if not isinstance(model, SavedModelSignature) and _is_keras(model):
        # NOTE: why this way: Keras 3 on JAX exports through jax2onnx, which converts what JAX traces (the
        # same model, another exporter); it does not help a SavedModel or a plain tf.Module
        ways.append("export with Keras on its JAX backend: --backend jax")
    ways.append("replace the layers that use them")
    why = []
    if missing:
        names = ", ".join(missing)
        why.append(f"tf2onnx {tf2onnx.__version__} converts {names} at no opset (it writes up to {highest})")
    if failed:
        log = capture.tail(2)
        detail = f" ({log})" if log else " (rerun with --verbose to see why)"
        why.append(f"tf2onnx failed on {', '.join(failed)}{detail}")
    return "; ".join([*why, ", or ".join(ways)])


def _is_keras(model: Any) -> bool:
    try:
        import keras

        return isinstance(model, keras.layers.Layer)
    except ImportError:  # pragma: no cover - the front end needs Keras
        return False
