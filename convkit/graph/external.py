"""Turn a model whose weights lie in external data files into one self-contained ``.onnx`` file, streaming the
weights from their files into the new one: the model's weights are never all in memory at once.

NOTE: why our own writer: ``onnx.load`` + ``onnx.save`` (and onnx_ir's save) build the whole model in
memory and then serialize it, two copies of the weights besides the framework's own; exporting BERT-base
peaked at 6x its weights that way. protobuf has no streaming writer, but its wire format is simple enough
to frame by hand: a length-delimited field is its tag, its length as a varint and its bytes, and every
field but the weights' is serialized by protobuf itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

# protobuf field numbers (onnx.proto): ModelProto.graph, GraphProto.initializer, TensorProto.raw_data
MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_RAW_DATA = 7, 5, 9
LENGTH_DELIMITED = 2
_COPY_CHUNK = 16 * 2**20


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _field_header(number: int, length: int) -> bytes:
    """The tag and length that open a length-delimited field of ``length`` bytes."""
    return _varint(number << 3 | LENGTH_DELIMITED) + _varint(length)


def external_bytes(model: Any) -> int:
    """How many bytes of the main graph's initializers lie in external data files."""
    import onnx

    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += int(_entries(tensor).get("length", 0))
    return total


def _entries(tensor: Any) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _other_external_tensors(model: Any) -> bool:
    """Whether a tensor outside the main graph's initializers (a Constant node's, a subgraph's) is external:
    those are rare, and left to ``onnx.load``."""
    import onnx

    from convkit.graph.names import subgraphs

    for index, graph in enumerate(subgraphs(model.graph)):
        tensors = [t for node in graph.node for a in node.attribute if a.HasField("t") for t in [a.t]]
        if index:
            tensors.extend(graph.initializer)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
            return True
    return False


def inline_external_data(path: Path) -> None:
    """Rewrite ``path`` (read without its external data) as one file holding its weights, and delete the
    external data files it used. The files must lie in ``path``'s folder (``load_onnx`` checked that).

    The result parses to the same model as ``onnx.load(path)`` with its external data loaded, and stays
    below protobuf's 2 GB only if the weights do: the caller decides (``EXTERNAL_DATA_THRESHOLD``).
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    folder = path.parent
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    files = sorted({_entries(t)["location"] for t in external})
    if not files:
        return
    if _other_external_tensors(model):
        full = onnx.load(str(path))
        onnx.save(full, str(path))
    else:
        _write_inline(model, external, path)
    for name in files:
        (folder / name).unlink(missing_ok=True)


def _write_inline(model: Any, external: list[Any], path: Path) -> None:
    """Write ``model`` to ``path`` with the bytes of its ``external`` initializers read into it."""
    import onnx

    heads = []
    for tensor in external:
        head = onnx.TensorProto()
        head.CopyFrom(tensor)
        head.ClearField("external_data")
        head.ClearField("data_location")
        length = int(_entries(tensor)["length"])
        heads.append((head.SerializeToString() + _field_header(TENSOR_RAW_DATA, length), tensor, length))
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    del graph.initializer[:]
    graph.initializer.extend(
        t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL
    )
    rest = graph.SerializeToString()
    graph_length = len(rest) + sum(
        len(_field_header(GRAPH_INITIALIZER, len(head) + length)) + len(head) + length
        for head, _, length in heads
    )
    shell = onnx.ModelProto()
    shell.CopyFrom(model)
    shell.ClearField("graph")
    target = path.with_name(path.name + ".inline")
    try:
        with open(target, "wb") as out:
            out.write(shell.SerializeToString())
            out.write(_field_header(MODEL_GRAPH, graph_length))
            out.write(rest)
            for head, tensor, length in heads:
                out.write(_field_header(GRAPH_INITIALIZER, len(head) + length))
                out.write(head)
                entries = _entries(tensor)
                with open(path.parent / entries["location"], "rb") as data:
                    data.seek(int(entries.get("offset", 0)))
                    _copy(data, out, length, tensor.name)
        os.replace(target, path)
    finally:
        target.unlink(missing_ok=True)


def _copy(source: IO[bytes], out: IO[bytes], length: int, name: str) -> None:
    """Copy exactly ``length`` bytes, in chunks."""
    left = length
    while left:
        chunk = source.read(min(left, _COPY_CHUNK))
        if not chunk:
            raise OSError(f"the external data of {name!r} ends {left} bytes short of its declared length")
        out.write(chunk)
        left -= len(chunk)
