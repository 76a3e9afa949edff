"""What the generator knows about each ONNX value while it writes ``forward``: a constant (folded at
generation time), a tensor (a local variable of ``forward``), or a shape value (a list of Python ints, some of
them expressions such as ``x.shape[0]``).

NOTE: why shape values are Python, not tensors: exporters spell ``x.reshape(x.shape[0], -1)`` as a chain of
``Shape``/``Gather``/``Concat``/``Mul`` nodes. Written as tensor arithmetic, that chain would be unreadable
and data-dependent (``torch.export`` cannot follow ``tensor.tolist()``); evaluated here on Python ints, it
becomes the one line a person would write, and dimensions known statically fold to numbers.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Entry = int | float | str
"""One element of a shape value: a number, or a Python expression (``x.shape[0]``)."""


@dataclass
class Const:
    """A value known at generation time. ``trainable``: it derives from a float initializer (a weight)."""

    array: np.ndarray
    trainable: bool = False
    source: str = ""
    """The initializer it comes from, for naming the parameter."""


@dataclass
class Tensor:
    """A tensor computed in ``forward``, held in the local variable ``var``; ``rank`` when known."""

    var: str
    rank: int | None = None


@dataclass
class Sym:
    """A 0-D or 1-D integer/float value computed from shapes: ``entries`` (each a number or expression), or,
    when its length is unknown, ``expr`` (a Python list expression)."""

    entries: list[Entry] | None
    expr: str = ""
    scalar: bool = False
    floating: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def is_static(self) -> bool:
        return self.entries is not None and all(not isinstance(e, str) for e in self.entries)

    def python(self) -> str:
        """The value as Python source: ``x.shape[0]`` (a scalar) or ``[x.shape[0], 1600]``."""
        if self.entries is None:
            return self.expr
        if self.scalar:
            return str(self.entries[0])
        return "[" + ", ".join(str(e) for e in self.entries) + "]"


Value = Const | Tensor | Sym

_RESERVED = {
    "torch", "nn", "F", "math", "self", "Path", "Model", "load", "training", "forward", "eval", "train",
    "state_dict", "parameters", "buffers", "modules", "children", "to", "cuda", "cpu", "float", "double",
    "half", "type", "apply", "zero_grad", "register_buffer", "register_parameter", "add_module", "int",
    "list", "len", "max", "min", "sum", "range", "tuple", "print", "input", "dtype",
}  # fmt: skip


def identifier(name: str, taken: set[str], fallback: str = "v") -> str:
    """A Python identifier for an ONNX name, unique within ``taken`` (which it joins).

    NOTE: why these rules: ONNX names are any strings (``0``, ``p2o.pd_op.conv2d.0.0``, ``/conv1/Conv``);
    the generated source must read as code, so dots and slashes become underscores, a leading digit gets a
    prefix, and names that would shadow the module's own attributes or the imported names get a suffix.
    """
    text = re.sub(r"\W+", "_", name).strip("_") or fallback
    if text[0].isdigit():
        text = f"{fallback}{text}"
    if keyword.iskeyword(text) or text in _RESERVED:
        text = f"{text}_"
    candidate, n = text, 1
    while candidate in taken:
        candidate = f"{text}_{n}"
        n += 1
    taken.add(candidate)
    return candidate


def literal(value: Any) -> str:
    """A Python literal for a number (exact for float32 values: ``repr`` of the float64 holding them)."""
    if isinstance(value, (bool, np.bool_)):
        return repr(bool(value))
    if isinstance(value, (int, np.integer)):
        return repr(int(value))
    number = float(value)
    if np.isnan(number):
        return "math.nan"
    if np.isinf(number):
        return "math.inf" if number > 0 else "-math.inf"
    return repr(number)


def ints(values: Any) -> str:
    """``(1, 2)`` for a tuple of ints, ``3`` for a single one."""
    values = [int(v) for v in values]
    return str(values[0]) if len(values) == 1 else "(" + ", ".join(map(str, values)) + ")"


TORCH_DTYPES = {
    "float32": "torch.float32", "float64": "torch.float64", "float16": "torch.float16",
    "bfloat16": "torch.bfloat16", "int8": "torch.int8", "int16": "torch.int16", "int32": "torch.int32",
    "int64": "torch.int64", "uint8": "torch.uint8", "bool": "torch.bool",
}  # fmt: skip
