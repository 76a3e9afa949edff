"""Layout and shape ops: Shape, Reshape, Flatten, Transpose, (Un)Squeeze, Concat, Split, Slice, Gather (an
embedding lookup when the table is a constant), Cast, Expand, ConstantOfShape, Range, Where, Pad, Tile,
Einsum."""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import helper

from convkit.migrate.emit import Emitter, module_hint, torch_dtype, unsupported
from convkit.migrate.ops_layers import Handler, attrs
from convkit.migrate.ops_tensor import _axes, _sym_entry
from convkit.migrate.values import Sym, literal

_BIG = 2**62


def _dim(e: Emitter, name: str, axis: int) -> Any:
    """Dimension ``axis`` of ``name``: an int when shape inference knows it, else ``x.shape[axis]``."""
    dims = e.dims.get(name)
    if dims is not None and axis < len(dims) and dims[axis] is not None:
        return dims[axis]
    return f"{e.tensor(name)}.shape[{axis}]"


def shape(e: Emitter, node: Any) -> None:
    a = attrs(node)
    rank = e.rank(node.input[0])
    start, end = a.get("start", 0), a.get("end")
    if rank is None:
        stop = "" if end is None else str(end)
        e.sym(node.output[0], Sym(None, expr=f"list({e.tensor(node.input[0])}.shape)[{start}:{stop}]"))
        return
    axes = list(range(rank))[slice(start, end)]
    e.sym(node.output[0], Sym([_dim(e, node.input[0], axis) for axis in axes]))


def size(e: Emitter, node: Any) -> None:
    e.sym(node.output[0], Sym([f"{e.tensor(node.input[0])}.numel()"], scalar=True))


def _shape_list(e: Emitter, node: Any, name: str) -> list[Any] | str:
    value = e.values.get(name)
    entries = _sym_entry(e, name)
    if entries is not None:
        return [int(v) if not isinstance(v, str) else v for v in entries]
    if isinstance(value, Sym):
        return value.expr
    raise unsupported(node, "its shape is computed from tensor values, not from shapes")


def reshape(e: Emitter, node: Any) -> None:
    target = _shape_list(e, node, node.input[1])
    value = e.values.get(node.input[0])
    if isinstance(value, Sym) and value.entries is not None and not isinstance(target, str):
        e.sym(node.output[0], Sym(value.entries, scalar=not target, floating=value.floating))
        return
    x = e.tensor(node.input[0])
    if isinstance(target, str):
        e.assign(node.output[0], f"{x}.reshape({target})")
        return
    if not attrs(node).get("allowzero", 0):
        target = [_dim(e, node.input[0], i) if v == 0 else v for i, v in enumerate(target)]
    e.assign(node.output[0], f"{x}.reshape({', '.join(map(str, target)) or '()'})", len(target))


def flatten(e: Emitter, node: Any) -> None:
    axis = int(attrs(node).get("axis", 1))
    rank = e.rank(node.input[0])
    if axis < 0:
        if rank is None:
            raise unsupported(node, "a negative axis on an input of unknown rank")
        axis += rank
    x = e.tensor(node.input[0])
    if axis == 0:
        e.assign(node.output[0], f"{x}.reshape(1, -1)", 2)
    elif axis == 1:
        e.assign(node.output[0], f"{x}.flatten(1)", 2)
    else:
        e.assign(node.output[0], f"{x}.flatten(0, {axis - 1}).flatten(1)", 2)


def transpose(e: Emitter, node: Any) -> None:
    perm = attrs(node).get("perm")
    if perm is None:
        rank = e.rank(node.input[0])
        if rank is None:
            raise unsupported(node, "no perm and an input of unknown rank")
        perm = list(reversed(range(rank)))
    e.assign(node.output[0], f"{e.tensor(node.input[0])}.permute({', '.join(map(str, perm))})", len(perm))


def unsqueeze(e: Emitter, node: Any) -> None:
    axes = _axes(e, node, 1) or []
    value = e.values.get(node.input[0])
    if isinstance(value, Sym) and value.scalar and axes in ([0], [-1]):
        e.sym(node.output[0], Sym(value.entries, scalar=False, floating=value.floating))
        return
    rank = e.rank(node.input[0])
    if rank is None and any(a < 0 for a in axes):
        raise unsupported(node, "negative axes on an input of unknown rank")
    out_rank = (rank or 0) + len(axes)
    expression = e.tensor(node.input[0])
    for axis in sorted(a + out_rank if a < 0 else a for a in axes):
        expression = f"{expression}.unsqueeze({axis})"
    e.assign(node.output[0], expression, None if rank is None else out_rank)


def squeeze(e: Emitter, node: Any) -> None:
    axes = _axes(e, node, 1)
    value = e.values.get(node.input[0])
    if isinstance(value, Sym) and value.entries is not None and len(value.entries) == 1:
        e.sym(node.output[0], Sym(value.entries, scalar=True, floating=value.floating))
        return
    x = e.tensor(node.input[0])
    e.assign(node.output[0], f"{x}.squeeze()" if axes is None else f"{x}.squeeze({tuple(axes)!r})")


def concat(e: Emitter, node: Any) -> None:
    axis = int(attrs(node).get("axis", 0))
    names = [n for n in node.input if n]
    if any(isinstance(e.values.get(n), Sym) for n in names):
        parts = [_sym_entry(e, n) for n in names]
        if all(p is not None for p in parts):
            e.sym(node.output[0], Sym([v for p in parts for v in p or []]))
        else:
            spread = ", ".join(f"*{_list_text(e, n)}" for n in names)
            e.sym(node.output[0], Sym(None, expr=f"[{spread}]"))
        return
    e.assign(node.output[0], f"torch.cat([{', '.join(e.tensor(n) for n in names)}], dim={axis})")


def _list_text(e: Emitter, name: str) -> str:
    value = e.values[name]
    return value.python() if isinstance(value, Sym) else str(_sym_entry(e, name))


def split(e: Emitter, node: Any) -> None:
    a = attrs(node)
    axis = int(a.get("axis", 0))
    sizes = a.get("split")
    if sizes is None and len(node.input) > 1 and node.input[1]:
        given = e.const(node.input[1])
        if given is None:
            raise unsupported(node, "its split sizes are computed in the graph")
        sizes = given.tolist()
    x = e.tensor(node.input[0])
    if sizes is None:
        call = f"torch.chunk({x}, {len(node.output)}, dim={axis})"
    else:
        call = f"torch.split({x}, {[int(s) for s in sizes]!r}, dim={axis})"
    e.assign_many(list(node.output), call if len(node.output) > 1 else f"{call}[0]")


def slice_(e: Emitter, node: Any) -> None:
    starts, ends = (_shape_list(e, node, n) for n in node.input[1:3])
    axes_given = _shape_list(e, node, node.input[3]) if len(node.input) > 3 and node.input[3] else None
    steps = _shape_list(e, node, node.input[4]) if len(node.input) > 4 and node.input[4] else None
    if (
        isinstance(starts, str)
        or isinstance(ends, str)
        or isinstance(axes_given, str)
        or isinstance(steps, str)
    ):
        raise unsupported(node, "slice bounds of unknown length")
    axes = axes_given or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    if any(isinstance(s, str) or s <= 0 for s in steps) or any(isinstance(a, str) for a in axes):
        raise unsupported(node, "negative or computed steps")
    value = e.values.get(node.input[0])

    def bound(v: Any, end: bool) -> str:
        if isinstance(v, str):
            return v
        if (end and v >= _BIG) or (not end and v == 0):
            return ""
        return str(max(int(v), -_BIG))

    if isinstance(value, Sym) and value.entries is not None and axes in ([0], [-1]):
        s, t, _st = (None if bound(v, i == 1) == "" else v for i, v in enumerate((starts[0], ends[0], 1)))
        if not isinstance(s, str) and not isinstance(t, str):
            e.sym(node.output[0], Sym(value.entries[slice(s, t, steps[0])]))
            return
    rank = e.rank(node.input[0])
    if rank is None and any(a < 0 for a in axes):
        raise unsupported(node, "negative axes on an input of unknown rank")
    axes = [a + rank if a < 0 and rank is not None else a for a in axes]
    index = [":"] * (max(axes) + 1)
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        text = f"{bound(start, False)}:{bound(end, True)}" + (f":{step}" if step != 1 else "")
        index[axis] = text
    e.assign(node.output[0], f"{e.tensor(node.input[0])}[{', '.join(index)}]", rank)


def gather(e: Emitter, node: Any) -> None:
    axis = int(attrs(node).get("axis", 0))
    data, indices = node.input[0], node.input[1]
    value, index = e.values.get(data), e.const(indices)
    if isinstance(value, Sym) and index is not None and axis == 0:
        if value.entries is not None:
            picked = [value.entries[int(i)] for i in index.reshape(-1)]
        else:
            picked = [f"{value.expr}[{int(i)}]" for i in index.reshape(-1)]
        e.sym(node.output[0], Sym(picked, scalar=index.ndim == 0, floating=value.floating))
        return
    table = e.const(data)
    if table is not None and table.ndim == 2 and axis == 0 and table.dtype.kind == "f" and index is None:
        # NOTE: why nn.Embedding: a constant float table indexed along its rows is what an embedding is
        constructor = f"nn.Embedding({table.shape[0]}, {table.shape[1]})"
        attr = e.module(module_hint(node, e.source_of(data)), constructor, {"weight": table}, ("Emb", data))
        e.assign(node.output[0], f"self.{attr}({e.tensor(indices)})")
        return
    rank = e.rank(data)
    if axis < 0:
        if rank is None:
            raise unsupported(node, "a negative axis on an input of unknown rank")
        axis += rank
    chosen = str(index.tolist()) if index is not None and index.size <= 64 else e.tensor(indices)
    e.assign(node.output[0], f"{e.tensor(data)}[{':, ' * axis}{chosen}]")


def cast(e: Emitter, node: Any) -> None:
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(int(attrs(node)["to"])))
    value = e.values.get(node.input[0])
    if isinstance(value, Sym) and value.entries is not None:
        floating = dtype.kind == "f"
        entries = [
            (float(v) if floating else int(v)) if not isinstance(v, str)
            else (v if floating or not value.floating else f"int({v})")
            for v in value.entries
        ]  # fmt: skip
        e.sym(node.output[0], Sym(entries, scalar=value.scalar, floating=floating))
        return
    e.assign(node.output[0], f"{e.tensor(node.input[0])}.to({torch_dtype(dtype)})", e.rank(node.input[0]))


def expand(e: Emitter, node: Any) -> None:
    target = _shape_list(e, node, node.input[1])
    shape_text = target if isinstance(target, str) else f"[{', '.join(map(str, target))}]"
    fill = e.const(node.input[0])
    if fill is not None and fill.size == 1:
        e.assign(node.output[0], _full(e, shape_text, fill.reshape(-1)[0], fill.dtype))
        return
    x = e.tensor(node.input[0])
    # NOTE: why broadcast_shapes: ONNX Expand broadcasts both ways (a 1 in the shape keeps the input's dim)
    e.assign(node.output[0], f"torch.broadcast_to({x}, torch.broadcast_shapes({x}.shape, {shape_text}))")


def _full(e: Emitter, shape_text: str, value: Any, dtype: np.dtype[Any]) -> str:
    device = f"{e.first_input}.device"
    return f"torch.full({shape_text}, {literal(value)}, dtype={torch_dtype(dtype)}, device={device})"


def constant_of_shape(e: Emitter, node: Any) -> None:
    target = _shape_list(e, node, node.input[0])
    shape_text = target if isinstance(target, str) else f"[{', '.join(map(str, target))}]"
    tensor = attrs(node).get("value")
    fill = np.zeros(1, np.float32) if tensor is None else _tensor_array(tensor)
    e.assign(node.output[0], _full(e, shape_text, fill.reshape(-1)[0], fill.dtype))


def _tensor_array(tensor: Any) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def range_(e: Emitter, node: Any) -> None:
    start, limit, delta = (e.operand(n) for n in node.input[:3])
    dtype = e.dtype_of(node.input[0]) or np.dtype("int64")
    device = f"{e.first_input}.device"
    e.assign(
        node.output[0],
        f"torch.arange({start}, {limit}, {delta}, dtype={torch_dtype(dtype)}, device={device})",
        1,
    )


def where(e: Emitter, node: Any) -> None:
    c, a, b = node.input
    e.assign(node.output[0], f"torch.where({e.tensor(c)}, {e.operand(a)}, {e.operand(b)})")


def pad(e: Emitter, node: Any) -> None:
    a = attrs(node)
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(a.get("mode", "constant"))
    pads = _shape_list(e, node, node.input[1])
    rank = e.rank(node.input[0])
    if mode is None or isinstance(pads, str) or rank is None:
        raise unsupported(node, f"mode {a.get('mode')}, computed pads or an input of unknown rank")
    axes = _axes(e, node, 3) or list(range(rank))
    full = [0] * (2 * rank)
    for k, axis in enumerate(axes):
        axis = axis + rank if axis < 0 else axis
        full[axis], full[rank + axis] = pads[k], pads[len(axes) + k]
    torch_pads: list[Any] = []
    for axis in reversed(range(rank)):
        torch_pads += [full[axis], full[rank + axis]]
    if not any(torch_pads):
        e.values[node.output[0]] = e.values[node.input[0]]
        return
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    fill = e.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    extra = f", value={literal(fill.reshape(-1)[0])}" if mode == "constant" and fill is not None else ""
    extra += f", mode={mode!r}" if mode != "constant" else ""
    e.assign(node.output[0], f"F.pad({e.tensor(node.input[0])}, {torch_pads!r}{extra})", rank)


def tile(e: Emitter, node: Any) -> None:
    repeats = _shape_list(e, node, node.input[1])
    text = repeats if isinstance(repeats, str) else ", ".join(map(str, repeats))
    e.assign(node.output[0], f"{e.tensor(node.input[0])}.repeat({text})")


def einsum(e: Emitter, node: Any) -> None:
    equation = attrs(node)["equation"]
    e.assign(node.output[0], f"torch.einsum({equation!r}, {', '.join(e.tensor(n) for n in node.input)})")


SHAPE_OPS: dict[str, Handler] = {
    "Shape": shape, "Size": size, "Reshape": reshape, "Flatten": flatten, "Transpose": transpose,
    "Unsqueeze": unsqueeze, "Squeeze": squeeze, "Concat": concat, "Split": split, "Slice": slice_,
    "Gather": gather, "Cast": cast, "Expand": expand, "ConstantOfShape": constant_of_shape, "Range": range_,
    "Where": where, "Pad": pad, "Tile": tile, "Einsum": einsum,
}  # fmt: skip
