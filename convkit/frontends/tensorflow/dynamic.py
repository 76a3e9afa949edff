"""Which of the axes left to the model (``InputSpec.dynamic_if_allowed``: those of ``--data``) a Keras export
makes dynamic: each axis the model itself declares as ``None`` (``keras.Input((None,))`` for a text model,
``keras.applications`` built with ``input_shape=(None, None, 3)``); the ones it fixes keep the example's
size, and a note says which.

NOTE: why the model's own shapes decide: a Keras model that declares ``None`` on an axis was built for any
size there (its layers were built on the symbolic shape, and tracing keeps it symbolic), so the ONNX model
may take any size too; a size it declares is one its weights or reshapes depend on (a ``Flatten`` into a
``Dense``), and tracing it as ``None`` would fail or, worse, export a graph valid for that size only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convkit.core.inputs import InputSpec, kept_static_note, resolve_dynamic_dims
from convkit.frontends.tensorflow.load import input_specs as declared_specs

_FIXED = "the model fixes {it}"
_UNDECLARED = "the model declares no input shapes to tell which sizes it takes (--input NAME:DIMS can)"


def settle(model: Any, specs: Sequence[InputSpec]) -> tuple[list[InputSpec], list[str]]:
    """Decide each ``dynamic_if_allowed`` axis of ``specs`` from the shapes the model declares.

    Args:
        model: a Keras model, a ``tf.Module`` or a ``SavedModelSignature`` (its signature's shapes).
        specs: the inputs as the core made them (ints fixed unless listed in ``dynamic_if_allowed``).

    Returns:
        The specs with every ``dynamic_if_allowed`` axis settled (an axis the model declares ``None`` takes
        a symbolic dim named by ``resolve_dynamic_dims``: ``seq`` for token ids, else ``<input>_dim<axis>``),
        and notes naming the axes kept at the example's size, and why.
    """
    if not any(spec.dynamic_if_allowed for spec in specs):
        return list(specs), []
    declared = {spec.name: spec for spec in declared_specs(model) or []}
    symbols: dict[tuple[str, int], str] = {}
    kept: dict[str, list[tuple[str, int, int]]] = {}
    for spec in specs:
        model_spec = declared.get(spec.name)
        model_dims = model_spec.dims if model_spec is not None else []
        for axis in spec.dynamic_if_allowed:
            if len(model_dims) == len(spec.dims) and isinstance(model_dims[axis], str):
                # NOTE: why one symbol per axis: Keras gives each None its own unknown size, so nothing
                # says that two inputs' open axes must agree
                symbols[(spec.name, axis)] = f"{spec.name}:{axis}"
                continue
            why = _FIXED if model_spec is not None else _UNDECLARED
            kept.setdefault(why, []).append((spec.name, axis, int(spec.dims[axis])))
    notes = [note for why, axes in kept.items() if (note := kept_static_note(axes, why))]
    return resolve_dynamic_dims(specs, symbols), notes
