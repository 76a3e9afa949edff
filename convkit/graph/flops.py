"""Count the floating-point operations of an ONNX graph at concrete input shapes.

Counted: Conv and ConvTranspose, Gemm, MatMul with its batch dimensions (attention's QK^T and AV included),
Einsum (and the quantized/fused forms that carry the same arithmetic: QLinearConv, ConvInteger, MatMulInteger,
QLinearMatMul, FusedConv, FusedGemm), as 2 FLOPs per multiply-add. Elementwise ops, softmax, pooling and
normalizations are left out: next to the products above they are noise, and "FLOP" in papers and model cards
means the same.

Shapes: the graph's inputs are pinned to the run's shapes, then onnx's shape inference (with data
propagation) runs; where it leaves a counted node's shapes unknown (a transformer's masked attention, for
instance), onnxruntime's symbolic shape inference fills them in. A count with unknown nodes says which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_CONV = {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "FusedConv"}
_MATMUL = {"MatMul", "MatMulInteger", "QLinearMatMul"}
_GEMM = {"Gemm", "FusedGemm"}
_COUNTED = _CONV | _MATMUL | _GEMM | {"Einsum"}


def _with_static_inputs(proto: Any, shapes: Mapping[str, tuple[int, ...]]) -> Any:
    import onnx

    pinned = onnx.ModelProto()
    pinned.CopyFrom(proto)
    for value in pinned.graph.input:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name], strict=False):
                dim.Clear()
                dim.dim_value = int(size)
    return onnx.shape_inference.infer_shapes(pinned, data_prop=True)


def _shapes(proto: Any) -> dict[str, list[int]]:
    known: dict[str, list[int]] = {}
    values = [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            known[value.name] = [int(d.dim_value) for d in dims]
    for tensor in proto.graph.initializer:
        known[tensor.name] = list(tensor.dims)
    return known


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _symbolic_shapes(proto: Any) -> dict[str, list[int]]:
    """onnxruntime's symbolic shape inference (it follows Shape/Gather/Concat chains and masks that onnx's
    own inference gives up on); empty when it cannot run on this graph."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return _shapes(SymbolicShapeInference.infer_shapes(proto, auto_merge=True))
    except Exception:  # NOTE: why broad: a fallback for counting; its failure leaves the nodes unknown
        return {}


def _einsum_flops(node: Any, shapes: Mapping[str, list[int]]) -> int | None:
    """2 x the product of every index's size (each output element sums over the contracted indices)."""
    raw = _attr(node, "equation", b"")
    equation = (raw.decode() if isinstance(raw, bytes) else str(raw)).replace(" ", "")
    operands = equation.split("->")[0].split(",")
    if "..." in equation or len(operands) != len(node.input):
        return None
    sizes: dict[str, int] = {}
    for letters, name in zip(operands, node.input, strict=True):
        shape = shapes.get(name)
        if shape is None or len(shape) != len(letters):
            return None
        sizes.update(zip(letters, shape, strict=True))
    return 2 * math.prod(sizes.values()) if len(operands) > 1 else 0


def count_flops(proto: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, list[str]]:
    """FLOPs of one run at ``input_shapes``; also the names of counted nodes whose shapes stayed unknown."""
    inferred = _with_static_inputs(proto, input_shapes)
    shapes = _shapes(inferred)
    counted = [node for node in inferred.graph.node if node.op_type in _COUNTED]
    if any(name not in shapes for node in counted for name in (*node.input[:2], node.output[0]) if name):
        shapes = {**_symbolic_shapes(inferred), **shapes}
    total = 0
    unknown: list[str] = []
    for node in counted:
        if node.op_type == "Einsum":
            flops = _einsum_flops(node, shapes)
            if flops is None:
                unknown.append(node.name or node.op_type)
            total += flops or 0
            continue
        weight_index = 3 if node.op_type in ("QLinearConv", "QLinearMatMul") else 1
        out = shapes.get(node.output[0])
        a = shapes.get(node.input[0])
        b = shapes.get(node.input[weight_index]) if len(node.input) > weight_index else None
        if out is None or a is None or b is None:
            unknown.append(node.name or node.op_type)
            continue
        if node.op_type in _CONV:
            if node.op_type == "ConvTranspose":
                # each input element is multiplied by a whole (C_out/group x kh x kw) kernel slice
                total += 2 * math.prod(a) * math.prod(b[1:])
            else:
                # weight (C_out, C_in/group, kh, kw): each output element is one dot product of that size
                total += 2 * math.prod(out) * math.prod(b[1:])
        elif node.op_type in _GEMM:
            k = a[0] if _attr(node, "transA", 0) else a[1]
            total += 2 * math.prod(out) * k
        else:
            total += 2 * math.prod(out) * a[-1]
    return total, unknown
