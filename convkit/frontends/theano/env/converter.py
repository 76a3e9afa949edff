"""PyTensor (Theano's successor) graphs to ONNX: convkit's own converter, one small handler per Op.

Runs in the Theano environment only (pytensor, numpy, onnx; never convkit). ``convert`` takes a model's
input variables and output variables, collects the shared variables the outputs depend on, rewrites a
clone of the graph with PyTensor's ``canonicalize`` rewrites, walks it in topological order and emits ONNX
nodes with ``onnx.helper``: every Op class has a handler (``Elemwise`` dispatches on its scalar op), shared
variables become initializers named after the shared variables, constants become ``Constant`` nodes.

NOTE: why a direct converter: no ONNX exporter for PyTensor exists. A detour through JAX (PyTensor's JAX
backend, then jax2onnx) works, but only after patching PyTensor (a JAX dispatch for ``Convolve2d``, a
hashable ``Reshape`` shape) and it brings JAX and jax2onnx into the environment; the ONNX it writes follows
JAX's lowering, not the graph the user built. The PyTensor graph is already a dataflow graph of a few
dozen standard Ops whose semantics are numpy's, which map one by one onto ONNX operators.

NOTE: why the canonicalized graph and not the one ``pytensor.function`` runs: FAST_RUN's graph carries
the C backend's concerns (``Gemm``/``Dot22`` BLAS calls, fused ``Composite`` loops, in-place ops) that
change nothing numerically; ``canonicalize`` folds constants, merges repeated subgraphs (the shape
arithmetic of slicing) and removes no-ops, and keeps the standard Ops. An Op without a handler stops the
conversion with ``ConversionError`` naming the Op, the variable it computes and, where PyTensor kept it,
the line of the user's code that created it: nothing is silently approximated.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# NOTE: why module-level imports: this file runs only in the Theano environment, never in the core.
import numpy as np
import onnx
from onnx import helper, numpy_helper
from pytensor.graph.basic import Constant, Variable

CONVERTER_VERSION = "1.0"
PRODUCER = "convkit-pytensor"
DEFAULT_OPSET = 17
MIN_OPSET = 14
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


class ConversionError(Exception):
    """A graph the converter cannot express in ONNX: one line, and a hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# ============================================================================================== context
class Graph:
    """The ONNX graph being built: names for PyTensor variables, nodes, initializers, fresh names."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: dict[Variable, str] = {}
        self.taken: set[str] = set()
        self._constants: dict[tuple[str, tuple[int, ...], bytes], str] = {}

    def fresh(self, hint: str) -> str:
        base = "".join(c if c.isalnum() or c in "._" else "_" for c in hint) or "v"
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def bind(self, var: Variable, name: str) -> None:
        self.names[var] = name

    def name(self, var: Variable) -> str:
        """The ONNX value of ``var``; a constant becomes a ``Constant`` node on first use."""
        if var not in self.names:
            if not isinstance(var, Constant):
                raise ConversionError(f"internal: {var} was used before it was computed")
            self.names[var] = self.const(np.asarray(var.data, dtype=var.type.dtype), "const")
        return self.names[var]

    def const(self, value: Any, hint: str = "const") -> str:
        """A ``Constant`` node holding ``value``; small ones are made once and shared.

        NOTE: why shared: slicing and reshaping repeat the same axes and sizes dozens of times; one node per
        value keeps the file readable (``convkit inspect``) without changing a result.
        """
        array = np.asarray(value)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key is not None and key in self._constants:
            return self._constants[key]
        out = self.fresh(hint)
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(array, out)))
        if key is not None:
            self._constants[key] = out
        return out

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        return self.const(np.asarray(list(values), np.int64), hint)

    def add(self, op_type: str, inputs: Sequence[str], hint: str | None = None, **attrs: Any) -> str:
        """Append a node of one output; returns the output's name."""
        out = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def cast(self, name: str, source: str, target: str) -> str:
        """``name`` as dtype ``target`` (no node when it already is)."""
        if np.dtype(source) == np.dtype(target):
            return name
        return self.add("Cast", [name], to=onnx_type(target))

    def unsqueeze(self, name: str, axes: Sequence[int]) -> str:
        return self.add("Unsqueeze", [name, self.ints(axes, "axes")])

    def squeeze(self, name: str, axes: Sequence[int]) -> str:
        return self.add("Squeeze", [name, self.ints(axes, "axes")])

    def reduce(self, op_type: str, name: str, axes: Sequence[int], keepdims: int = 0) -> str:
        """A reduction over ``axes``: as an input from opset 18 (13 for ReduceSum), an attribute before."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.add(op_type, [name, self.ints(axes, "axes")], keepdims=keepdims)
        return self.add(op_type, [name], axes=list(axes), keepdims=keepdims)


def onnx_type(dtype: Any) -> int:
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def dtype_of(var: Variable) -> str:
    return str(var.type.dtype)


def constant_value(var: Variable, what: str) -> Any:
    """The value of a constant input; ``ConversionError`` when the graph computes it."""
    if isinstance(var, Constant):
        return var.data
    raise ConversionError(
        f"{what} must be a constant, but {var} is computed by the graph",
        "give it as a Python number in the model's code",
    )


# ========================================================================================= scalar ops
@functools.cache
def _scalar_handlers() -> dict[type, Callable[[Graph, Any, list[str], list[str], str], str]]:
    """Scalar op class -> ``f(graph, scalar_op, input names, input dtypes, output dtype)``; ``Elemwise``
    nodes, bare scalar nodes and the inside of ``Composite`` all go through these."""
    import pytensor.scalar.basic as sb
    import pytensor.scalar.math as sm

    def arith(op_type: str, variadic: bool = False) -> Callable[..., str]:
        def emit(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
            cast = [g.cast(n, d, out) for n, d in zip(ins, dtypes, strict=True)]
            if variadic or len(cast) <= 2:
                return g.add(op_type, cast)
            result = cast[0]
            for name in cast[1:]:
                result = g.add(op_type, [result, name])
            return result

        return emit

    def unary(op_type: str) -> Callable[..., str]:
        def emit(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
            return g.add(op_type, [g.cast(ins[0], dtypes[0], out)])

        return emit

    def compare(op_type: str, negate: bool = False) -> Callable[..., str]:
        def emit(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
            common = str(np.result_type(*dtypes))
            result = g.add(op_type, [g.cast(n, d, common) for n, d in zip(ins, dtypes, strict=True)])
            return g.add("Not", [result]) if negate else result

        return emit

    def logical(op_type: str) -> Callable[..., str]:
        # NOTE: why bool only: on integers PyTensor's and/or/xor/invert are bitwise, another function
        def emit(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
            if any(d != "bool" for d in dtypes):
                raise ConversionError(f"{op} on {', '.join(dtypes)} (bitwise) has no ONNX rule here")
            result = ins[0]
            for name in ins[1:]:
                result = g.add(op_type, [result, name])
            return g.add("Not", [result]) if op_type == "Not" else result

        return emit

    def floats(g: Graph, ins: list[str], dtypes: list[str], out: str) -> tuple[list[str], str]:
        """Inputs as the output dtype when it is a float, else float64 (exact for ints below 2**53)."""
        work = out if np.issubdtype(np.dtype(out), np.floating) else "float64"
        return [g.cast(n, d, work) for n, d in zip(ins, dtypes, strict=True)], work

    def int_div(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        # NOTE: why floor(a / b): PyTensor's // rounds toward minus infinity like numpy; ONNX's integer Div
        # truncates toward zero, which differs for negative operands
        (a, b), work = floats(g, ins, dtypes, out)
        return g.cast(g.add("Floor", [g.add("Div", [a, b])]), work, out)

    def mod(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        if not np.issubdtype(np.dtype(out), np.floating):
            return g.add("Mod", [g.cast(n, d, out) for n, d in zip(ins, dtypes, strict=True)], fmod=0)
        # NOTE: why not Mod(fmod=1): that is C's fmod (the dividend's sign); numpy's % takes the divisor's
        (a, b), _ = floats(g, ins, dtypes, out)
        return g.add("Sub", [a, g.add("Mul", [g.add("Floor", [g.add("Div", [a, b])]), b])])

    def sqr(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        x = g.cast(ins[0], dtypes[0], out)
        return g.add("Mul", [x, x])

    def log1p(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        x = g.cast(ins[0], dtypes[0], out)
        return g.add("Log", [g.add("Add", [x, g.const(np.asarray(1, out))])])

    def expm1(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        x = g.cast(ins[0], dtypes[0], out)
        return g.add("Sub", [g.add("Exp", [x]), g.const(np.asarray(1, out))])

    def softplus(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        # NOTE: why not ONNX Softplus: log(1 + exp(x)) overflows to inf for large x in float32, where
        # PyTensor's softplus is x; max(x, 0) + log(1 + exp(-|x|)) is the same function without overflow
        x = g.cast(ins[0], dtypes[0], out)
        tail = g.add("Exp", [g.add("Neg", [g.add("Abs", [x])])])
        log = g.add("Log", [g.add("Add", [tail, g.const(np.asarray(1, out))])])
        return g.add("Add", [g.add("Max", [x, g.const(np.asarray(0, out))]), log])

    def clip(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        x, low, high = (g.cast(n, d, out) for n, d in zip(ins, dtypes, strict=True))
        return g.add("Min", [g.add("Max", [x, low]), high])

    def switch(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        condition = g.cast(ins[0], dtypes[0], "bool")
        return g.add("Where", [condition, g.cast(ins[1], dtypes[1], out), g.cast(ins[2], dtypes[2], out)])

    def cast(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        return g.add("Cast", [ins[0]], to=onnx_type(out)) if dtypes[0] != out else g.add("Identity", ins)

    def identity(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        return g.add("Identity", [g.cast(ins[0], dtypes[0], out)])

    def second(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        return g.add("Expand", [g.cast(ins[1], dtypes[1], out), g.add("Shape", [ins[0]])])

    def true_div(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        return g.add("Div", [g.cast(n, d, out) for n, d in zip(ins, dtypes, strict=True)])

    def reciprocal(g: Graph, op: Any, ins: list[str], dtypes: list[str], out: str) -> str:
        return g.add("Reciprocal", [g.cast(ins[0], dtypes[0], out)])

    return {
        sb.Add: arith("Add"),
        sb.Sub: arith("Sub"),
        sb.Mul: arith("Mul"),
        sb.TrueDiv: true_div,
        sb.IntDiv: int_div,
        sb.Mod: mod,
        sb.Pow: arith("Pow"),
        sb.Maximum: arith("Max", variadic=True),
        sb.Minimum: arith("Min", variadic=True),
        sb.Neg: unary("Neg"),
        sb.Abs: unary("Abs"),
        sb.Sign: unary("Sign"),
        sb.Exp: unary("Exp"),
        sb.Log: unary("Log"),
        sb.Log1p: log1p,
        sb.Expm1: expm1,
        sb.Sqrt: unary("Sqrt"),
        sb.Sqr: sqr,
        sb.Reciprocal: reciprocal,
        sb.Tanh: unary("Tanh"),
        sb.Sinh: unary("Sinh"),
        sb.Cosh: unary("Cosh"),
        sb.Sin: unary("Sin"),
        sb.Cos: unary("Cos"),
        sb.Tan: unary("Tan"),
        sb.ArcTan: unary("Atan"),
        sb.Floor: unary("Floor"),
        sb.Ceil: unary("Ceil"),
        sb.RoundHalfToEven: unary("Round"),
        sb.IsNan: unary("IsNaN"),
        sb.IsInf: unary("IsInf"),
        sm.Sigmoid: unary("Sigmoid"),
        sm.Softplus: softplus,
        sm.Erf: unary("Erf"),
        sb.Clip: clip,
        sb.Switch: switch,
        sb.Cast: cast,
        sb.Identity: identity,
        sb.Second: second,
        sb.GT: compare("Greater"),
        sb.LT: compare("Less"),
        sb.GE: compare("GreaterOrEqual"),
        sb.LE: compare("LessOrEqual"),
        sb.EQ: compare("Equal"),
        sb.NEQ: compare("Equal", negate=True),
        sb.AND: logical("And"),
        sb.OR: logical("Or"),
        sb.XOR: logical("Xor"),
        sb.Invert: logical("Not"),
    }


def scalar(g: Graph, op: Any, ins: list[str], dtypes: list[str], out_dtypes: list[str]) -> list[str]:
    """One scalar op applied elementwise (numpy broadcasting); a ``Composite`` is expanded."""
    import pytensor.scalar.basic as sb

    if isinstance(op, sb.Composite):
        inner: dict[Any, str] = dict(zip(op.fgraph.inputs, ins, strict=True))
        for node in op.fgraph.toposort():
            values = [
                inner[v] if v in inner else g.const(np.asarray(v.data, v.type.dtype)) for v in node.inputs
            ]
            results = scalar(
                g, node.op, values, [dtype_of(v) for v in node.inputs], [dtype_of(v) for v in node.outputs]
            )
            inner.update(zip(node.outputs, results, strict=True))
        return [inner[v] for v in op.fgraph.outputs]
    emit = _scalar_handlers().get(type(op))
    if emit is None:
        raise _no_rule(op)
    return [emit(g, op, ins, dtypes, out_dtypes[0])]


# ============================================================================================= tensor ops
def elemwise(g: Graph, node: Any) -> list[str]:
    op = node.op.scalar_op if hasattr(node.op, "scalar_op") else node.op
    ins = [g.name(v) for v in node.inputs]
    return scalar(g, op, ins, [dtype_of(v) for v in node.inputs], [dtype_of(v) for v in node.outputs])


def dimshuffle(g: Graph, node: Any) -> list[str]:
    """``drop`` axes squeezed, the rest transposed into ``shuffle``'s order, ``augment`` axes inserted."""
    op = node.op
    x = g.name(node.inputs[0])
    if op.drop:
        x = g.squeeze(x, op.drop)
    kept = [axis for axis in range(op.input_ndim) if axis not in op.drop]
    perm = [kept.index(axis) for axis in op.shuffle]
    if perm != sorted(perm):
        x = g.add("Transpose", [x], perm=perm)
    if op.augment:
        x = g.unsqueeze(x, op.augment)
    return [x]


def dot(g: Graph, node: Any) -> list[str]:
    """``Dot`` of vectors and matrices, and ``matmul`` (a ``Blockwise`` of it): numpy's and ONNX's
    ``MatMul`` agree on both."""
    out = dtype_of(node.outputs[0])
    a, b = (g.cast(g.name(v), dtype_of(v), out) for v in node.inputs)
    return [g.add("MatMul", [a, b])]


def careduce(g: Graph, node: Any) -> list[str]:
    import pytensor.scalar.basic as sb

    op = node.op
    (x,) = node.inputs
    ndim = x.type.ndim
    axes = list(range(ndim)) if op.axis is None else [int(a) % max(ndim, 1) for a in op.axis]
    out = dtype_of(node.outputs[0])
    name = g.name(x)
    if not axes:
        return [g.add("Identity", [g.cast(name, dtype_of(x), out)])]
    kinds = {sb.Add: "ReduceSum", sb.Mul: "ReduceProd", sb.Maximum: "ReduceMax", sb.Minimum: "ReduceMin"}
    logical = {sb.AND: "ReduceMin", sb.OR: "ReduceMax"}
    kind = type(op.scalar_op)
    if kind in logical:
        result = g.reduce(logical[kind], g.cast(name, dtype_of(x), "int32"), axes)
        return [g.cast(result, "int32", out)]
    if kind not in kinds:
        raise _no_rule(op)
    # NOTE: why the accumulator's dtype: PyTensor sums float32 in float64 (``acc_dtype``); ONNX would sum in
    # float32, a needless difference on long sums
    work = str(getattr(op, "acc_dtype", None) or out)
    result = g.reduce(kinds[kind], g.cast(name, dtype_of(x), work), axes)
    return [g.cast(result, work, out)]


def argmax(g: Graph, node: Any) -> list[str]:
    (x,) = node.inputs
    name = g.name(x)
    axes = node.op.axis
    if axes is None or len(axes) == x.type.ndim:
        if x.type.ndim != 1:
            name = g.add("Reshape", [name, g.ints([-1])])
        axis = 0
    elif len(axes) == 1:
        axis = int(axes[0])
    else:
        raise ConversionError(f"argmax over axes {tuple(axes)} (some, not all, of {x.type.ndim}) has no rule")
    return [g.cast(g.add("ArgMax", [name], axis=axis, keepdims=0), "int64", dtype_of(node.outputs[0]))]


def softmax(g: Graph, node: Any, log: bool = False) -> list[str]:
    (x,) = node.inputs
    name = g.name(x)
    axis = node.op.axis
    axes = list(range(x.type.ndim)) if axis is None else [axis] if isinstance(axis, int) else list(axis)
    if len(axes) == 1:
        return [g.add("LogSoftmax" if log else "Softmax", [name], axis=int(axes[0]))]
    # NOTE: why spelled out: ONNX's Softmax normalizes over one axis; over several it is written with
    # reductions that keep their dims
    shifted = g.add("Sub", [name, g.reduce("ReduceMax", name, axes, keepdims=1)])
    total = g.reduce("ReduceSum", g.add("Exp", [shifted]), axes, keepdims=1)
    if log:
        return [g.add("Sub", [shifted, g.add("Log", [total])])]
    return [g.add("Div", [g.add("Exp", [shifted]), total])]


def shape(g: Graph, node: Any) -> list[str]:
    return [g.cast(g.add("Shape", [g.name(node.inputs[0])]), "int64", dtype_of(node.outputs[0]))]


def shape_i(g: Graph, node: Any) -> list[str]:
    full = g.add("Shape", [g.name(node.inputs[0])])
    index = g.const(np.asarray(node.op.i, np.int64), "index")
    return [g.cast(g.add("Gather", [full, index], axis=0), "int64", dtype_of(node.outputs[0]))]


def reshape(g: Graph, node: Any) -> list[str]:
    x, target = node.inputs
    dims = g.cast(g.name(target), dtype_of(target), "int64")
    # NOTE: why allowzero: a 0 in PyTensor's shape means size 0, in ONNX's (by default) "copy this dim"
    return [g.add("Reshape", [g.name(x), dims], allowzero=1)]


def identity(g: Graph, node: Any) -> list[str]:
    """Ops that pass their first input through (copies, views, shape assertions).

    NOTE: why assertions vanish: ONNX has no assertion op. PyTensor's checks (broadcast sizes, asserts)
    raise on data they reject; on data they accept the ONNX model computes the same without them.
    """
    return [g.add("Identity", [g.name(node.inputs[0])])]


def make_vector(g: Graph, node: Any) -> list[str]:
    out = dtype_of(node.outputs[0])
    if not node.inputs:
        return [g.const(np.zeros(0, out))]
    parts = [g.unsqueeze(g.cast(g.name(v), dtype_of(v), out), [0]) for v in node.inputs]
    return [g.add("Concat", parts, axis=0)]


def join(g: Graph, node: Any) -> list[str]:
    axis_var, *tensors = node.inputs
    out = node.outputs[0]
    axis = int(constant_value(axis_var, "the axis of a join")) % out.type.ndim
    parts = [g.cast(g.name(v), dtype_of(v), dtype_of(out)) for v in tensors]
    return [g.add("Concat", parts, axis=axis) if len(parts) > 1 else g.add("Identity", parts)]


def alloc(g: Graph, node: Any) -> list[str]:
    value, *dims = node.inputs
    out = dtype_of(node.outputs[0])
    target = int_vector(g, dims)
    return [g.add("Expand", [g.cast(g.name(value), dtype_of(value), out), target])]


def arange(g: Graph, node: Any) -> list[str]:
    out = dtype_of(node.outputs[0])
    start, stop, step = (g.cast(g.name(v), dtype_of(v), out) for v in node.inputs)
    return [g.add("Range", [start, stop, step])]


def subtensor(g: Graph, node: Any) -> list[str]:
    """Basic indexing: the slices as one ``Slice``, then each integer index as a ``Gather`` (which drops the
    axis), highest axis first so that lower axis numbers hold."""
    from pytensor.tensor.subtensor import indices_from_subtensor

    x, *index_inputs = node.inputs
    indices = indices_from_subtensor(index_inputs, node.op.idx_list)
    name = g.name(x)
    starts: list[Any] = []
    ends: list[Any] = []
    steps: list[Any] = []
    axes: list[int] = []
    integers: list[tuple[int, Variable]] = []
    for axis, index in enumerate(indices):
        if not isinstance(index, slice):
            integers.append((axis, index))
            continue
        if index == slice(None):
            continue
        step = 1 if index.step is None else index.step
        if isinstance(step, Variable):
            step = int(constant_value(step, "a slice's step"))
        start = index.start if index.start is not None else (0 if step > 0 else INT64_MAX)
        stop = index.stop if index.stop is not None else (INT64_MAX if step > 0 else INT64_MIN)
        starts.append(start)
        ends.append(stop)
        steps.append(step)
        axes.append(axis)
    if axes:
        name = g.add("Slice", [name, int_vector(g, starts), int_vector(g, ends), g.ints(axes), g.ints(steps)])
    for axis, index in reversed(integers):
        position = g.cast(g.name(index), dtype_of(index), "int64")
        name = g.add("Gather", [name, position], axis=axis)
    return [name]


def int_vector(g: Graph, values: Sequence[Any]) -> str:
    """A 1-D int64 tensor from Python ints and scalar variables, mixed."""
    if all(not isinstance(v, Variable) or isinstance(v, Constant) for v in values):
        return g.ints([int(v.data) if isinstance(v, Constant) else int(v) for v in values])
    parts = [
        g.unsqueeze(g.cast(g.name(v), dtype_of(v), "int64"), [0])
        if isinstance(v, Variable)
        else g.ints([int(v)])
        for v in values
    ]
    return g.add("Concat", parts, axis=0)


def take_rows(g: Graph, node: Any) -> list[str]:
    """``x[indices]`` with an integer vector (``AdvancedSubtensor1``)."""
    x, indices = node.inputs
    return [g.add("Gather", [g.name(x), g.cast(g.name(indices), dtype_of(indices), "int64")], axis=0)]


def take(g: Graph, node: Any) -> list[str]:
    """Advanced indexing by one integer tensor on one axis, full slices elsewhere (``x[:, idx]``): a
    ``Gather`` on that axis, which puts the index's dims where the axis was, as numpy does here.

    NOTE: why only this form: with several index arrays, or arrays beside integers, numpy moves the indexed
    dims to the front or broadcasts the arrays together, rules a single Gather does not follow.
    """
    from pytensor.tensor.subtensor import indices_from_subtensor

    x, *index_inputs = node.inputs
    indices = indices_from_subtensor(index_inputs, node.op.idx_list)
    arrays = [(axis, i) for axis, i in enumerate(indices) if not isinstance(i, slice)]
    full = all(i == slice(None) for i in indices if isinstance(i, slice))
    if len(arrays) != 1 or not full or arrays[0][1].type.ndim == 0 or "int" not in dtype_of(arrays[0][1]):
        raise ConversionError(
            f"the converter has no rule for this advanced indexing ({node.op}): it takes one integer array "
            "on one axis, with full slices elsewhere",
            "index one axis at a time (x[:, idx][:, :, 0] instead of x[:, idx, 0])",
        )
    axis, index = arrays[0]
    return [g.add("Gather", [g.name(x), g.cast(g.name(index), dtype_of(index), "int64")], axis=axis)]


def convolve2d(g: Graph, node: Any) -> list[str]:
    """``signal.convolve2d``'s op (a true convolution of the last two axes, broadcast over the others) as a
    sum of shifted slices times the flipped kernel's taps.

    NOTE: why not ONNX ``Conv``: ``Conv`` contracts input channels with one kernel set shared by the batch;
    ``Convolve2d`` convolves plane by plane with batch dims broadcast between data and kernel, which
    ``Conv`` can express only as a grouped convolution whose group count would be the (dynamic) batch size.
    Shifted slices multiplied by each tap and summed are the same sum for any broadcast, with the kernel
    size read from the kernel's static shape.
    """
    data, kernel, full = node.inputs
    size = kernel.type.shape[-2:]
    if None in size:
        raise ConversionError(
            f"convolve2d with a kernel of unknown spatial size ({kernel}): the converter unrolls its taps",
            "give the kernel a static shape (pytensor.shared(..., shape=...) or pt.tensor(shape=...))",
        )
    if data.type.shape[-2:] != (None, None) and any(
        d is not None and d < k for d, k in zip(data.type.shape[-2:], size, strict=True)
    ):
        raise ConversionError(
            f"convolve2d of {data} with a kernel {kernel} larger than it has no rule",
            "pass the larger operand first (convolution is symmetric)",
        )
    out = dtype_of(node.outputs[0])
    x = g.cast(g.name(data), dtype_of(data), out)
    k = g.cast(g.name(kernel), dtype_of(kernel), out)
    kh, kw = (int(s) for s in size)
    if bool(constant_value(full, "convolve2d's mode")):
        zeros = [0] * (data.type.ndim - 2)
        x = g.add("Pad", [x, g.ints([*zeros, kh - 1, kw - 1, *zeros, kh - 1, kw - 1], "pads")])
    dims = g.add("Shape", [x])
    height = g.add(
        "Sub", [g.add("Gather", [dims, g.const(np.asarray(-2, np.int64))], axis=0), g.ints([kh - 1])]
    )
    width = g.add(
        "Sub", [g.add("Gather", [dims, g.const(np.asarray(-1, np.int64))], axis=0), g.ints([kw - 1])]
    )
    total = None
    for i in range(kh):
        for j in range(kw):
            # convolution: output[p, q] = sum over taps of x[p + i, q + j] * kernel[kh-1-i, kw-1-j]
            starts = g.ints([i, j])
            ends = g.add(
                "Concat", [g.add("Add", [height, g.ints([i])]), g.add("Add", [width, g.ints([j])])], axis=0
            )
            window = g.add("Slice", [x, starts, ends, g.ints([-2, -1])])
            tap = g.add(
                "Slice",
                [k, g.ints([kh - 1 - i, kw - 1 - j]), g.ints([kh - i, kw - j]), g.ints([-2, -1])],
            )
            term = g.add("Mul", [window, tap])
            total = term if total is None else g.add("Add", [total, term])
    return [total]


def _no_rule(op: Any) -> ConversionError:
    return ConversionError(f"the converter has no rule for the PyTensor op {op} ({type(op).__name__})")


@functools.cache
def _handlers() -> dict[type, Callable[[Graph, Any], list[str]]]:
    import pytensor.compile.ops as compile_ops
    import pytensor.raise_op as raise_op
    import pytensor.scalar.basic as sb
    import pytensor.tensor.basic as tb
    import pytensor.tensor.elemwise as te
    import pytensor.tensor.math as tm
    import pytensor.tensor.special as ts
    import pytensor.tensor.subtensor as tsub
    from pytensor.scan.op import Scan

    tshape = importlib.import_module("pytensor.tensor.shape")
    scan = _sibling("scan")
    this = sys.modules[__name__]

    return {
        te.Elemwise: elemwise,
        sb.ScalarOp: elemwise,
        te.DimShuffle: dimshuffle,
        te.CAReduce: careduce,
        tm.Argmax: argmax,
        tm.Dot: dot,
        ts.Softmax: softmax,
        ts.LogSoftmax: lambda g, node: softmax(g, node, log=True),
        tshape.Shape: shape,
        tshape.Shape_i: shape_i,
        tshape.Reshape: reshape,
        tshape.SpecifyShape: identity,
        tb.MakeVector: make_vector,
        tb.Join: join,
        tb.Alloc: alloc,
        tb.ARange: arange,
        tb.ScalarFromTensor: identity,
        tb.TensorFromScalar: identity,
        tsub.Subtensor: subtensor,
        tsub.AdvancedSubtensor1: take_rows,
        tsub.AdvancedSubtensor: take,
        raise_op.CheckAndRaise: identity,
        compile_ops.DeepCopyOp: identity,
        compile_ops.ViewOp: identity,
        Scan: functools.partial(scan.convert_scan, converter=this),
        tb.AllocEmpty: functools.partial(scan.alloc_empty, converter=this),
        tsub.IncSubtensor: functools.partial(scan.inc_subtensor, converter=this),
    }


def _sibling(name: str) -> Any:
    """The module ``<name>.py`` beside this file, loaded by path once (as the worker loads its siblings).

    NOTE: why by path and handed this module: the environment has no convkit package to import from, and
    the sibling (``scan.py``: a Scan's body is converted with this file's handlers) must not load a second
    copy of this file.
    """
    module_name = f"convkit_worker_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@functools.cache
def _blockwise_handlers() -> dict[type, Callable[[Graph, Any], list[str]]]:
    import pytensor.tensor.math as tm
    from pytensor.tensor.signal.conv import Convolve2d

    return {tm.Dot: dot, Convolve2d: convolve2d}


def handler_for(op: Any) -> Callable[[Graph, Any], list[str]] | None:
    """The handler of ``op``'s class (or its nearest base class); a ``Blockwise`` by its core op."""
    from pytensor.tensor.blockwise import Blockwise

    if isinstance(op, Blockwise):
        return _blockwise_handlers().get(type(op.core_op))
    table = _handlers()
    return next((table[cls] for cls in type(op).__mro__ if cls in table), None)


# ================================================================================================ convert
def shared_inputs(outputs: Sequence[Variable]) -> list[Any]:
    """The shared variables ``outputs`` depend on, in graph order."""
    from pytensor.compile.sharedvalue import SharedVariable
    from pytensor.graph.traversal import graph_inputs

    return [v for v in graph_inputs(outputs) if isinstance(v, SharedVariable)]


def canonical_graph(inputs: Sequence[Variable], outputs: Sequence[Variable]) -> Any:
    """A rewritten clone of the graph from ``inputs`` and the shared variables to ``outputs``."""
    from pytensor.compile import optdb
    from pytensor.graph.fg import FunctionGraph
    from pytensor.graph.rewriting.db import RewriteDatabaseQuery
    from pytensor.graph.utils import MissingInputError

    shared = shared_inputs(outputs)
    try:
        fgraph = FunctionGraph([*inputs, *shared], list(outputs), clone=True)
    except MissingInputError as exc:
        missing = getattr(exc, "variable", None)
        raise ConversionError(
            f"the outputs depend on {missing if missing is not None else 'a variable'}, which is neither an "
            "input nor a shared variable",
            "list every symbolic input the outputs use in the factory's inputs",
        ) from exc
    # NOTE: why no in-place rewrites: they need a destroy handler and only save memory in PyTensor's own VM
    query = RewriteDatabaseQuery(include=["canonicalize"], exclude=["inplace", "cxx_only"])
    optdb.query(query).rewrite(fgraph)
    return fgraph, shared


def _origin(var: Variable) -> str:
    """Where the user's code created ``var`` (PyTensor keeps the stack), or empty."""
    trace = getattr(var.tag, "trace", None)
    if not trace:
        return ""
    frames = trace[-1] if isinstance(trace[-1], list) else trace
    if not frames:
        return ""
    frame = frames[-1]
    return f", created at {frame[0]}:{frame[1]}"


def convert(
    inputs: Sequence[Variable],
    outputs: Sequence[Variable],
    input_dims: Sequence[Sequence[int | str | None]] | None = None,
    opset: int = DEFAULT_OPSET,
    shared_names: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """Convert the graph from ``inputs`` to ``outputs`` to an ONNX model.

    Args:
        inputs: the model's input variables (their names are the ONNX inputs' names).
        outputs: the output variables, in order.
        input_dims: each input's ONNX dims (ints fixed, strings symbolic); the variables' static shapes
            when omitted.
        opset: the ONNX opset (14 or later).
        shared_names: the initializer name of each shared variable in ``shared_inputs(outputs)``'s order
            (their ``name`` when omitted).

    Raises:
        ConversionError: an op has no rule here, or the graph is not convertible as written.
    """
    if opset < MIN_OPSET:
        raise ConversionError(
            f"opset {opset} is too old for this converter", f"use --opset {MIN_OPSET} or later"
        )
    fgraph, shared = canonical_graph(inputs, outputs)
    names = (
        list(shared_names)
        if shared_names is not None
        else [v.name or f"shared_{k}" for k, v in enumerate(shared)]
    )
    g = Graph(opset)
    graph_inputs = []
    for k, (var, clone) in enumerate(zip(inputs, fgraph.inputs, strict=False)):
        dims = list(input_dims[k]) if input_dims is not None else list(var.type.shape)
        name = g.fresh(var.name or f"input_{k}")
        g.bind(clone, name)
        graph_inputs.append(helper.make_tensor_value_info(name, onnx_type(dtype_of(var)), dims))
    for var, clone, name in zip(shared, fgraph.inputs[len(inputs) :], names, strict=True):
        g.bind(clone, g.fresh(name))
        g.initializers.append(numpy_helper.from_array(np.asarray(var.get_value(borrow=True)), g.names[clone]))
    for node in fgraph.toposort():
        handler = handler_for(node.op)
        if handler is None:
            var = node.outputs[0]
            raise ConversionError(
                f"the converter has no rule for the PyTensor op {node.op} ({type(node.op).__name__}), which "
                f"computes {var.name or var} ({var.type}){_origin(var)}",
                "write that part with supported ops (elementwise math, dot/matmul, reductions, softmax, "
                "indexing, reshape/dimshuffle, join, convolve2d), or leave it out of the exported graph",
            )
        try:
            results = handler(g, node)
        except ConversionError as exc:
            raise ConversionError(
                f"{exc.message} (computing {node.outputs[0]}{_origin(node.outputs[0])})", exc.hint
            ) from exc
        for var, result in zip(node.outputs, results, strict=True):
            g.bind(var, result)
    graph_outputs = []
    used: set[str] = {value.name for value in graph_inputs}
    for k, var in enumerate(fgraph.outputs):
        name = g.name(var)
        # NOTE: why an Identity for some: an ONNX output must be a node's own, distinct value
        if name in used or name in {t.name for t in g.initializers} or isinstance(var, Constant):
            name = g.add("Identity", [name], hint=f"output_{k}")
        used.add(name)
        dims = [d if isinstance(d, int) else None for d in var.type.shape]
        graph_outputs.append(helper.make_tensor_value_info(name, onnx_type(dtype_of(var)), dims))
    graph = helper.make_graph(g.nodes, "pytensor", graph_inputs, graph_outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name=PRODUCER,
        producer_version=CONVERTER_VERSION,
    )
    # NOTE: why the oldest IR version of the opset: onnx writes its newest, which older runtimes refuse
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    onnx.checker.check_model(model)
    return model
