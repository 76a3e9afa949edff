"""Which of the axes left to the model (``InputSpec.dynamic_if_allowed``: those of ``--data``) a JAX export
makes dynamic: the ones JAX can trace symbolically (shape polymorphism, ``jax.eval_shape`` on symbolic
shapes); the others keep the example's size, and a note says which.

NOTE: why tracing decides: a JAX function declares no input shapes, so the only way to learn whether it
takes any sequence length is to trace it with one; a size the model depends on (a weight's width, a reshape
to a fixed count) makes the trace fail ("incompatible shapes", "cannot prove"), one it does not depend on
stays symbolic. ``jax.eval_shape`` traces without computing or converting, a fraction of a second per try.

NOTE: why axes are tried one at a time, then as groups of equal size: most open axes are independent (an
image's height and width), but some must agree across inputs (token ids and their attention mask share the
sequence length), and one symbol each would make that trace fail; those get one shared symbol.

JAX is imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from convkit.core.inputs import InputSpec, kept_static_note, resolve_dynamic_dims

_FIXED = "the model fixes {it}"
Axis = tuple[str, int]  # (input name, axis)


def settle(model: Any, specs: Sequence[InputSpec]) -> tuple[list[InputSpec], list[str]]:
    """Decide each ``dynamic_if_allowed`` axis of ``specs`` by tracing ``model`` with it symbolic.

    Args:
        model: an NNX module or a JAX callable, called with the inputs positionally in ``specs``' order.
        specs: the inputs as the core made them (ints fixed unless listed in ``dynamic_if_allowed``).

    Returns:
        The specs with every ``dynamic_if_allowed`` axis settled (symbolic where the trace allows, named by
        ``resolve_dynamic_dims``), and notes naming the axes kept at the example's size.
    """
    candidates = [(spec.name, axis) for spec in specs for axis in spec.dynamic_if_allowed]
    if not candidates:
        return list(specs), []
    accepted: dict[Axis, str] = {}
    for k, candidate in enumerate(candidates):
        trial = {**accepted, candidate: f"convkit_open{k}"}
        if _traces(model, specs, trial):
            accepted = trial
    sizes = {(spec.name, axis): int(spec.dims[axis]) for spec in specs for axis in spec.dynamic_if_allowed}
    by_size: dict[int, list[Axis]] = {}
    for candidate in candidates:
        if candidate not in accepted:
            by_size.setdefault(sizes[candidate], []).append(candidate)
    for k, group in enumerate(group for group in by_size.values() if len(group) > 1):
        trial = {**accepted, **{axis: f"convkit_shared{k}" for axis in group}}
        if _traces(model, specs, trial):
            accepted = trial
    kept = [(name, axis, sizes[(name, axis)]) for name, axis in candidates if (name, axis) not in accepted]
    note = kept_static_note(kept, _FIXED)
    return resolve_dynamic_dims(specs, accepted), [note] if note else []


def static_again(specs: Sequence[InputSpec], resolved: Sequence[InputSpec]) -> list[InputSpec]:
    """``resolved`` with the axes that ``settle`` opened fixed again at the example's size (``specs``)."""
    original = {spec.name: spec for spec in specs}
    fixed = []
    for spec in resolved:
        dims = list(spec.dims)
        for axis in original[spec.name].dynamic_if_allowed:
            dims[axis] = original[spec.name].dims[axis]
        fixed.append(InputSpec(spec.name, dims, spec.dtype, spec.low, spec.high))
    return fixed


def kept_notes(specs: Sequence[InputSpec], why: str) -> list[str]:
    """The note for every ``dynamic_if_allowed`` axis of ``specs`` kept at its size, for the reason ``why``
    (``{it}`` stands for the axes; other braces are taken literally)."""
    kept = [(spec.name, axis, int(spec.dims[axis])) for spec in specs for axis in spec.dynamic_if_allowed]
    literal = why.replace("{", "{{").replace("}", "}}").replace("{{it}}", "{it}")
    note = kept_static_note(kept, literal)
    return [note] if note else []


def _traces(model: Any, specs: Sequence[InputSpec], open_axes: Mapping[Axis, str]) -> bool:
    """Whether ``model`` traces with the specs' symbolic dims and ``open_axes`` symbolic (one symbol per
    name), every other axis at its size."""
    import jax

    names: dict[str, str] = {}
    for spec in specs:
        for axis, dim in enumerate(spec.dims):
            symbol = open_axes.get((spec.name, axis), dim if isinstance(dim, str) else None)
            if symbol is not None and symbol not in names:
                names[symbol] = f"convkit_sym{len(names)}"  # JAX parses names; these always parse
    try:
        dims = dict(zip(names, jax.export.symbolic_shape(", ".join(names.values())), strict=True))
        structs = []
        for spec in specs:
            shape = []
            for axis, dim in enumerate(spec.dims):
                symbol = open_axes.get((spec.name, axis), dim if isinstance(dim, str) else None)
                shape.append(dims[symbol] if symbol is not None else int(dim))
            dtype = jax.dtypes.canonicalize_dtype(np.dtype(spec.dtype))
            structs.append(jax.ShapeDtypeStruct(tuple(shape), dtype))
        jax.eval_shape(model, *structs)
    except Exception:  # any failure to trace means "not this way"; the export reports real errors
        return False
    return True
