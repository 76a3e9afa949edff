"""Count the floating-point operations of an ONNX graph at concrete input shapes.

Counted: Conv and ConvTranspose, Gemm, MatMul (and the quantized/fused forms that carry the same arithmetic:
QLinearConv, ConvInteger, MatMulInteger, QLinearMatMul, FusedConv, FusedGemm), as 2 FLOPs per multiply-add.
Elementwise ops, pooling and normalizations are left out: next to the products above they are noise, and
"FLOP" in papers and model cards means the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_CONV = {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "FusedConv"}
_MATMUL = {"MatMul", "MatMulInteger", "QLinearMatMul"}
_GEMM = {"Gemm", "FusedGemm"}


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


def count_flops(proto: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, list[str]]:
    """FLOPs of one run at ``input_shapes``; also the names of counted nodes whose shapes stayed unknown."""
    inferred = _with_static_inputs(proto, input_shapes)
    shapes = _shapes(inferred)
    total = 0
    unknown: list[str] = []
    for node in inferred.graph.node:
        if node.op_type not in _CONV | _MATMUL | _GEMM:
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
