"""What ``convkit inspect`` shows: a summary of an ONNX model computed from the protobuf alone."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from convkit.graph.model import OnnxModel


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int | str | None]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}


@dataclass
class ModelSummary:
    path: str
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_types: dict[str, int]
    node_count: int
    parameter_count: int
    parameter_bytes: int
    external_data_files: list[str] = field(default_factory=list)
    file_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["inputs"] = [t.to_dict() for t in self.inputs]
        data["outputs"] = [t.to_dict() for t in self.outputs]
        return data


def _dtype_name(elem_type: int) -> str:
    import onnx

    if elem_type == 0:
        return "undefined"
    if elem_type == onnx.TensorProto.STRING:
        return "string"
    numpy_dtype = _numpy_dtype(elem_type)
    if numpy_dtype is not None:
        return str(numpy_dtype.name)
    # NOTE: why a name rather than an error: load_onnx refuses numbers ONNX does not define; one it defines
    # that this onnx maps to no numpy type is still worth showing
    return onnx.TensorProto.DataType.Name(elem_type).lower() if _defined(elem_type) else f"type {elem_type}"


def _numpy_dtype(elem_type: int) -> Any:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    except KeyError:
        return None


def _defined(elem_type: int) -> bool:
    import onnx

    return elem_type in onnx.TensorProto.DataType.values()


def _tensor_info(value: Any) -> TensorInfo:
    tensor_type = value.type.tensor_type
    shape: list[int | str | None] = []
    if tensor_type.HasField("shape"):
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                shape.append(dim.dim_param)
            else:
                shape.append(None)
    return TensorInfo(name=value.name, dtype=_dtype_name(tensor_type.elem_type), shape=shape)


def summarize(model: OnnxModel) -> ModelSummary:
    """Summarize ``model``: IR and opsets, producer, I/O, op histogram, parameters, external data."""
    import math

    import onnx

    proto = model.proto
    graph = proto.graph
    initializer_names = {t.name for t in graph.initializer}
    op_types: Counter[str] = Counter()

    def walk(g: Any) -> None:
        for node in g.node:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            op_types[key] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        walk(sub)

    walk(graph)
    count = nbytes = 0
    for tensor in graph.initializer:
        elements = math.prod(tensor.dims)
        count += elements
        numpy_dtype = _numpy_dtype(tensor.data_type)
        if tensor.data_type == onnx.TensorProto.STRING or numpy_dtype is None:
            continue
        nbytes += elements * numpy_dtype.itemsize
    return ModelSummary(
        path=str(model.path),
        ir_version=int(proto.ir_version),
        opsets={(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import},
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
        inputs=[_tensor_info(v) for v in graph.input if v.name not in initializer_names],
        outputs=[_tensor_info(v) for v in graph.output],
        op_types=dict(op_types.most_common()),
        node_count=sum(op_types.values()),
        parameter_count=count,
        parameter_bytes=nbytes,
        external_data_files=list(model.external_files),
        file_bytes=model.path.stat().st_size,
    )
