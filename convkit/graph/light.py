"""Read an ONNX file without reading its weights: every large initializer of the main graph comes back as an
external-data reference into the file itself (its ``location`` is the model's own file name, with the
offset and length of its bytes there).

The result is a valid ONNX model: ``onnx.numpy_helper.to_array(tensor, base_dir=folder)`` and
``onnx.load_external_data_for_model`` read the true values, and onnxruntime, given the file's path, reads
the file as it is.

NOTE: why by hand: protobuf parses a message whole, so ``onnx.load`` holds the file's bytes and the parsed
copy of every weight at once (2x the weights, 3x with the checker's serialized copy) for a model whose weights
only onnxruntime ever reads. The wire format is walked here only to skip the bytes of large ``raw_data``
fields; every message without them is still parsed by protobuf.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

from convkit.graph.external import GRAPH_INITIALIZER, LENGTH_DELIMITED, MODEL_GRAPH, TENSOR_RAW_DATA

_VARINT, _FIXED64, _FIXED32 = 0, 1, 5  # the other protobuf wire types
# NOTE: why 1 MiB: smaller tensors cost little to read, and keeping them inline keeps small models whole
LIGHT_MIN_BYTES = 2**20


class _Malformed(Exception):
    """The bytes are not a protobuf message this walk understands."""


def _varint(data: Any, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: Any, start: int, end: int) -> Any:
    """``(number, wire type, field start, value start, field end)`` of each field in ``data[start:end]``."""
    pos = start
    while pos < end:
        tag, value_start = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, field_end = _varint(data, value_start)
        elif wire == _FIXED64:
            field_end = value_start + 8
        elif wire == _FIXED32:
            field_end = value_start + 4
        elif wire == LENGTH_DELIMITED:
            length, value_start = _varint(data, value_start)
            field_end = value_start + length
        else:
            raise _Malformed
        if field_end > end:
            raise _Malformed
        yield number, wire, pos, value_start, field_end
        pos = field_end


def load_light(path: Path) -> Any | None:
    """The model at ``path`` with the bytes of its large initializers left in the file (see the module's
    docstring); ``None`` when it holds none (or is not a protobuf this walk reads): parse it whole then."""
    with open(path, "rb") as file:
        try:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return None
    with data:
        try:
            return _light_model(data, path.name)
        except _Malformed:
            return None


def _light_model(data: Any, name: str) -> Any | None:
    import onnx
    from google.protobuf.message import DecodeError

    shell, graph_range = bytearray(), None
    for number, wire, start, value_start, end in _fields(data, 0, len(data)):
        if number == MODEL_GRAPH and wire == LENGTH_DELIMITED:
            if graph_range is not None:
                raise _Malformed  # two graph fields, which protobuf merges: parse it whole
            graph_range = (value_start, end)
        else:
            shell += data[start:end]
    if graph_range is None:
        return None
    rest, tensors, skipped = bytearray(), [], 0
    for number, wire, start, value_start, end in _fields(data, *graph_range):
        if number != GRAPH_INITIALIZER or wire != LENGTH_DELIMITED:
            rest += data[start:end]
            continue
        tensor, offset, length = _light_tensor(data, value_start, end)
        if offset is not None:
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", name), ("offset", offset), ("length", length)):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
            skipped += 1
        tensors.append(tensor)
    if not skipped:
        return None
    try:
        model = onnx.ModelProto.FromString(bytes(shell))
        model.graph.ParseFromString(bytes(rest))
    except DecodeError as exc:
        raise _Malformed from exc
    model.graph.initializer.extend(tensors)
    return model


def _light_tensor(data: Any, start: int, end: int) -> tuple[Any, int | None, int]:
    """The TensorProto in ``data[start:end]``, without its ``raw_data`` when that is large: then also the
    offset and length of those bytes in the file."""
    import onnx
    from google.protobuf.message import DecodeError

    kept, offset, length = bytearray(), None, 0
    for number, wire, field_start, value_start, field_end in _fields(data, start, end):
        large = field_end - value_start >= LIGHT_MIN_BYTES
        if number == TENSOR_RAW_DATA and wire == LENGTH_DELIMITED and large and offset is None:
            offset, length = value_start, field_end - value_start
        else:
            kept += data[field_start:field_end]
    try:
        tensor = onnx.TensorProto.FromString(bytes(kept))
    except DecodeError as exc:
        raise _Malformed from exc
    if offset is not None and (
        tensor.data_location == onnx.TensorProto.EXTERNAL or length != _expected_bytes(tensor)
    ):
        raise _Malformed  # both inline and external bytes, or a wrong size: the full parse says what is wrong
    return tensor, offset, length


def _expected_bytes(tensor: Any) -> int | None:
    import numpy as np
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        itemsize = np.dtype(tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def checkable(model: Any, name: str) -> Any:
    """A copy of a light ``model`` for onnx's checker: the tensors whose bytes stay in the file ``name`` are
    graph inputs of their type and shape instead of initializers.

    NOTE: why: given a proto, the checker looks for external files from the working directory, not the
    model's folder; given the path, it reads the whole file. Their sizes were checked while reading.
    """
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    inputs = {value.name for value in graph.input}
    kept = []
    for tensor in graph.initializer:
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location")
        if tensor.data_location != onnx.TensorProto.EXTERNAL or location != name:
            kept.append(tensor)
        elif tensor.name not in inputs:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return copy
