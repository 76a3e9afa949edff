"""ONNX ops that become functional calls: elementwise arithmetic and activations, softmax, reductions, and
the layout ops (Reshape, Transpose, Concat, Slice, Gather ...), with shape arithmetic kept in Python ints
(see ``convkit.migrate.values``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from convkit.migrate.emit import Emitter, unsupported
from convkit.migrate.ops_layers import Handler, attrs
from convkit.migrate.values import Const, Sym, Tensor, literal

_BINARY = {"Add": "+", "Sub": "-", "Mul": "*", "Pow": "**"}
_COMPARE = {"Equal": "==", "Less": "<", "Greater": ">", "LessOrEqual": "<=", "GreaterOrEqual": ">="}
_UNARY = {
    "Relu": "torch.relu({})", "Sigmoid": "torch.sigmoid({})", "Tanh": "torch.tanh({})",
    "Exp": "torch.exp({})", "Log": "torch.log({})", "Sqrt": "torch.sqrt({})", "Abs": "torch.abs({})",
    "Neg": "-{}", "Reciprocal": "torch.reciprocal({})", "Erf": "torch.erf({})", "Floor": "torch.floor({})",
    "Ceil": "torch.ceil({})", "Sin": "torch.sin({})", "Cos": "torch.cos({})", "Softplus": "F.softplus({})",
    "Softsign": "F.softsign({})", "Not": "torch.logical_not({})", "Sign": "torch.sign({})",
    "Identity": "{}", "HardSwish": "F.hardswish({})", "Round": "torch.round({})",
}  # fmt: skip
_REDUCE = {"ReduceMean": "torch.mean", "ReduceSum": "torch.sum", "ReduceMax": "torch.amax",
           "ReduceMin": "torch.amin", "ReduceLogSumExp": "torch.logsumexp"}  # fmt: skip


def _sym_entry(e: Emitter, name: str) -> list[Any] | None:
    """A shape-like value's entries (from a shape value or a small integer constant)."""
    value = e.values.get(name)
    if isinstance(value, Sym):
        return value.entries
    if isinstance(value, Const) and value.array.ndim <= 1 and value.array.size <= 64:
        return value.array.reshape(-1).tolist()
    return None


def _is_sym(e: Emitter, name: str) -> bool:
    return isinstance(e.values.get(name), Sym)


def _sym_arith(a: Any, b: Any, op: str) -> Any:
    if not isinstance(a, str) and not isinstance(b, str):
        if op == "//":
            return int(a) // int(b)
        operations = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide,
                      "max": np.maximum, "min": np.minimum}  # fmt: skip
        return operations[op](a, b).item()
    if op in ("max", "min"):
        return f"{op}({a}, {b})"
    return f"({a} {op} {b})"


def binary(e: Emitter, node: Any) -> None:
    a_name, b_name = node.input[0], node.input[1]
    op = node.op_type
    if (_is_sym(e, a_name) or _is_sym(e, b_name)) and op in ("Add", "Sub", "Mul", "Div", "Max", "Min"):
        left, right = _sym_entry(e, a_name), _sym_entry(e, b_name)
        if (
            left is not None
            and right is not None
            and (len(left) == len(right) or 1 in (len(left), len(right)))
        ):
            sa, sb = e.values.get(a_name), e.values.get(b_name)
            floating = any(isinstance(s, Sym) and s.floating for s in (sa, sb))
            size = max(len(left), len(right))
            left, right = left * (size // len(left)), right * (size // len(right))
            symbol = {"Add": "+", "Sub": "-", "Mul": "*", "Max": "max", "Min": "min"}.get(
                op, "/" if floating else "//"
            )
            scalar = all((isinstance(s, Sym) and s.scalar) or (isinstance(s, Const) and s.array.ndim == 0)
                         for s in (sa, sb))  # fmt: skip
            entries = [_sym_arith(x, y, symbol) for x, y in zip(left, right, strict=True)]
            e.sym(node.output[0], Sym(entries, scalar=scalar, floating=floating))
            return
    left_text, right_text = e.operand(a_name), e.operand(b_name)
    if not any(isinstance(e.values.get(n), Tensor) for n in (a_name, b_name)):
        left_text = e.tensor(a_name)
    left, right = left_text, right_text  # type: ignore[assignment]
    if op in _BINARY:
        e.assign(node.output[0], f"{left} {_BINARY[op]} {right}")
    elif op in _COMPARE:
        e.assign(node.output[0], f"{left} {_COMPARE[op]} {right}")
    elif op == "Div":
        dtype = e.dtype_of(node.output[0])
        # NOTE: why trunc: ONNX divides integers rounding toward zero, torch's ``/`` would give floats
        integer = dtype is not None and dtype.kind in "iu"
        e.assign(node.output[0], f"torch.div({left}, {right}, rounding_mode='trunc')" if integer
                 else f"{left} / {right}")  # fmt: skip
    elif op in ("And", "Or", "Xor"):
        e.assign(node.output[0], f"torch.logical_{op.lower()}({e.tensor(a_name)}, {e.tensor(b_name)})")
    elif op == "Mod":
        fn = "torch.fmod" if attrs(node).get("fmod", 0) else "torch.remainder"
        e.assign(node.output[0], f"{fn}({e.tensor(a_name)}, {right})")


def variadic(e: Emitter, node: Any) -> None:
    if len(node.input) == 2 and node.op_type in ("Max", "Min") and any(_is_sym(e, n) for n in node.input):
        binary(e, node)
        return
    fn = {"Max": "torch.maximum", "Min": "torch.minimum", "Sum": "torch.add"}.get(node.op_type)
    expression = e.tensor(node.input[0])
    for other in node.input[1:]:
        expression = f"{fn}({expression}, {e.tensor(other)})" if fn else f"{expression} + {e.tensor(other)}"
    if node.op_type == "Mean":
        expression = f"({expression}) / {len(node.input)}"
    e.assign(node.output[0], expression)


def unary(e: Emitter, node: Any) -> None:
    value = e.values.get(node.input[0])
    if isinstance(value, Sym) and node.op_type == "Identity":
        e.sym(node.output[0], value)
        return
    if isinstance(value, Sym) and node.op_type in ("Floor", "Neg") and value.entries is not None:
        form = "math.floor({})" if node.op_type == "Floor" else "(-{})"
        entries = [
            form.format(x) if isinstance(x, str) else (int(np.floor(x)) if node.op_type == "Floor" else -x)
            for x in value.entries
        ]
        e.sym(
            node.output[0],
            Sym(entries, scalar=value.scalar, floating=value.floating and node.op_type == "Neg"),
        )
        return
    e.assign(node.output[0], _UNARY[node.op_type].format(e.tensor(node.input[0])), e.rank(node.input[0]))


def activation(e: Emitter, node: Any) -> None:
    a = attrs(node)
    x = e.tensor(node.input[0])
    op = node.op_type
    if op == "LeakyRelu":
        expression = f"F.leaky_relu({x}, {literal(np.float32(a.get('alpha', 0.01)))})"
    elif op == "Elu":
        expression = f"F.elu({x}, {literal(np.float32(a.get('alpha', 1.0)))})"
    elif op == "Selu":
        alpha = literal(np.float32(a.get("alpha", 1.67326319217681884765625)))
        gamma = literal(np.float32(a.get("gamma", 1.05070102214813232421875)))
        expression = f"{gamma} * torch.where({x} > 0, {x}, {alpha} * torch.expm1({x}))"
    elif op == "HardSigmoid":
        alpha, beta = literal(np.float32(a.get("alpha", 0.2))), literal(np.float32(a.get("beta", 0.5)))
        expression = f"torch.clamp({alpha} * {x} + {beta}, 0, 1)"
    elif op == "Gelu":
        approximate = a.get("approximate", "none")
        expression = f"F.gelu({x}, approximate={approximate!r})"
    elif op in ("Softmax", "LogSoftmax"):
        fn = "torch.softmax" if op == "Softmax" else "torch.log_softmax"
        expression = f"{fn}({x}, dim={int(a.get('axis', -1))})"
    else:  # Clip
        low = e.operand(node.input[1]) if len(node.input) > 1 and node.input[1] else "None"
        high = e.operand(node.input[2]) if len(node.input) > 2 and node.input[2] else "None"
        expression = f"torch.clamp({x}, {low}, {high})"
    e.assign(node.output[0], expression, e.rank(node.input[0]))


def _axes(e: Emitter, node: Any, position: int) -> list[int] | None:
    a = attrs(node)
    if "axes" in a:
        return list(a["axes"])
    if len(node.input) > position and node.input[position]:
        value = e.const(node.input[position])
        if value is None:
            raise unsupported(node, "its axes are computed in the graph")
        return [int(v) for v in value.reshape(-1)]
    return None


def reduce(e: Emitter, node: Any) -> None:
    a = attrs(node)
    axes = _axes(e, node, 1)
    keep = bool(a.get("keepdims", 1))
    x = e.tensor(node.input[0])
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            e.assign(node.output[0], x)
            return
        rank = e.rank(node.input[0])
        if rank is None:
            raise unsupported(node, "unknown input rank")
        axes = list(range(rank))
    op = node.op_type
    if op in _REDUCE:
        expression = f"{_REDUCE[op]}({x}, dim={axes!r}, keepdim={keep})"
    elif op == "ReduceSumSquare":
        expression = f"torch.sum({x} * {x}, dim={axes!r}, keepdim={keep})"
    elif op == "ReduceL2":
        expression = f"torch.sqrt(torch.sum({x} * {x}, dim={axes!r}, keepdim={keep}))"
    elif op == "ReduceL1":
        expression = f"torch.sum(torch.abs({x}), dim={axes!r}, keepdim={keep})"
    else:  # ReduceProd
        expression = x
        for axis in sorted(axes, reverse=True):
            expression = f"torch.prod({expression}, dim={axis}, keepdim={keep})"
    e.assign(node.output[0], expression)


def arg_reduce(e: Emitter, node: Any) -> None:
    a = attrs(node)
    if a.get("select_last_index", 0):
        raise unsupported(node, "select_last_index")
    fn = "torch.argmax" if node.op_type == "ArgMax" else "torch.argmin"
    keep = bool(a.get("keepdims", 1))
    e.assign(node.output[0], f"{fn}({e.tensor(node.input[0])}, dim={int(a.get('axis', 0))}, keepdim={keep})")


def register(table: dict[str, Handler]) -> None:
    for op in (*_BINARY, *_COMPARE, "Div", "And", "Or", "Xor", "Mod"):
        table[op] = binary
    for op in ("Max", "Min", "Sum", "Mean"):
        table[op] = variadic
    for op in _UNARY:
        table[op] = unary
    for op in ("LeakyRelu", "Elu", "Selu", "HardSigmoid", "Gelu", "Softmax", "LogSoftmax", "Clip"):
        table[op] = activation
    for op in (*_REDUCE, "ReduceSumSquare", "ReduceL2", "ReduceL1", "ReduceProd"):
        table[op] = reduce
    table["ArgMax"] = table["ArgMin"] = arg_reduce


TENSOR_OPS: dict[str, Handler] = {}
register(TENSOR_OPS)
