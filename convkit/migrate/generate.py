"""Walk an ONNX graph and write it as PyTorch source: constants folded, one handler per op, every other op
refused by name.

NOTE: why constants are folded with onnx's reference implementation first: exporters compute weights in the
graph (``Transpose(W)``, ``Reshape(bias, [1, -1, 1, 1])``, convkit's PyTensor converter reshaping kernels);
evaluated once here by the ONNX specification's own code, the layer handlers see plain weight arrays and
write ``nn.Linear``/``nn.Conv2d`` instead of replaying that arithmetic on every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from convkit.migrate.emit import Emitter, render, unsupported
from convkit.migrate.ops_layers import LAYER_OPS, Handler
from convkit.migrate.ops_rnn import lstm
from convkit.migrate.ops_shape import SHAPE_OPS
from convkit.migrate.ops_tensor import TENSOR_OPS
from convkit.migrate.values import Const, Tensor, identifier

OPS: dict[str, Handler] = {**TENSOR_OPS, **SHAPE_OPS, **LAYER_OPS, "LSTM": lstm}
"""Every ONNX op (default domain) the generator maps."""

_FOLD_LIMIT = 64 * 1024 * 1024  # elements: a constant bigger than this is not folded ahead of time


@dataclass
class Generated:
    """The source of ``model.py``, its state dict (numpy arrays), and the graph's input/output names."""

    source: str
    state: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]
    arguments: list[tuple[str, str]]
    """Each graph input with its ``forward`` argument name."""


def generate(proto: Any, source_name: str) -> Generated:
    """Write ``proto`` (an ONNX ``ModelProto``, opset 13 or later) as a PyTorch module.

    Raises:
        UnsupportedModelError: a node has no exact PyTorch mapping (the op and the node are named).
    """
    from onnx import numpy_helper

    inferred = _infer(proto)
    ranks, dims, dtypes = _shapes(inferred)
    graph = proto.graph
    values: dict[str, Any] = {}
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        values[tensor.name] = Const(array, trainable=array.dtype.kind == "f", source=tensor.name)
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for output in graph.output:
        users.setdefault(output.name, []).append(None)
    inputs = [i.name for i in graph.input if i.name not in values]
    taken: set[str] = set()
    arguments = [(name, identifier(name, taken, "x")) for name in inputs]
    emitter = Emitter(values, ranks, dims, users, dtypes, first_input=arguments[0][1] if arguments else "x")
    emitter.variables |= taken
    for name, var in arguments:
        values[name] = Tensor(var, ranks.get(name))
    for node in graph.node:
        if id(node) in emitter.skipped:
            continue
        if node.domain not in ("", "ai.onnx"):
            raise unsupported(node, f"custom domain {node.domain!r}")
        if node.op_type == "Constant" or _foldable(node, values):
            _fold(node, values, proto)
            continue
        handler = OPS.get(node.op_type)
        if handler is None:
            raise unsupported(node)
        handler(emitter, node)
        for output in node.output:
            fused = any(user is not None and id(user) in emitter.skipped for user in users.get(output, []))
            if output and output not in values and not fused:
                raise unsupported(node, f"output {output!r} was not written")
    outputs = [o.name for o in graph.output]
    notes = _notes(proto)
    text = render(emitter, arguments, outputs, source_name, notes)
    return Generated(text, emitter.state, inputs, outputs, arguments)


def _notes(proto: Any) -> str:
    producer = f"{proto.producer_name} {proto.producer_version}".strip() or "an unknown exporter"
    return f"The ONNX model was written by {producer}."


def _infer(proto: Any) -> Any:
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # NOTE: why broad: inference is a help for naming and ranks, never required
        return proto


def _shapes(proto: Any) -> tuple[dict[str, int], dict[str, list[int | None]], dict[str, np.dtype[Any]]]:
    from onnx import helper

    ranks: dict[str, int] = {}
    dims: dict[str, list[int | None]] = {}
    dtypes: dict[str, np.dtype[Any]] = {}
    graph = proto.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type:
            dtypes[info.name] = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if not tensor_type.HasField("shape"):
            continue
        found = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        ranks[info.name] = len(found)
        dims[info.name] = found
    return ranks, dims, dtypes


def _foldable(node: Any, values: dict[str, Any]) -> bool:
    if node.op_type in (
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
    ):
        return False
    named = [name for name in node.input if name]
    return bool(named) and all(isinstance(values.get(name), Const) for name in named)


def _fold(node: Any, values: dict[str, Any], proto: Any) -> None:
    """Evaluate ``node`` on its constant inputs with onnx's reference implementation."""
    from onnx.reference import ReferenceEvaluator

    opsets = {entry.domain or "": entry.version for entry in proto.opset_import}
    feeds = {name: values[name].array for name in node.input if name}
    sizes = sum(a.size for a in feeds.values())
    if sizes > _FOLD_LIMIT:
        raise unsupported(node, "a constant computation too large to fold")
    try:
        results = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
    except Exception as exc:
        raise unsupported(node, f"folding its constant inputs failed ({type(exc).__name__}: {exc})") from exc
    sources = [values[name] for name in node.input if name]
    trainable = any(s.trainable for s in sources)
    origin = next((s.source for s in sources if s.trainable and s.source), "")
    for name, result in zip(node.output, results, strict=False):
        if name:
            values[name] = Const(np.asarray(result), trainable=trainable, source=origin)
