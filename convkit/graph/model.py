"""Load ONNX files safely: clear errors for missing, truncated or corrupt files; external data confined to
the model's folder; old opsets upgraded on request."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convkit.errors import InputFileError, ModelLoadError, UnsafeModelError, UnsupportedModelError

if TYPE_CHECKING:
    import onnx

# NOTE: why 17: the oldest opset that every current onnxruntime implements in full and that the onnx
# version converter reaches from opset 1 for the common ops (Gemm, BatchNormalization, Add ... from -6).
UPGRADE_TARGET_OPSET = 17


@dataclass
class OnnxModel:
    """A parsed model and where it came from. External tensors are validated but not loaded into ``proto``;
    onnxruntime reads them from ``path``'s folder."""

    path: Path
    proto: onnx.ModelProto
    external_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def light(self) -> bool:
        """Whether ``proto`` leaves weights in the file at ``path`` (``load_onnx(weights=False)``)."""
        return self.path.name in self.external_files

    @property
    def opset(self) -> int:
        return default_domain_opset(self.proto)

    @property
    def input_names(self) -> list[str]:
        initializers = {t.name for t in self.proto.graph.initializer}
        return [i.name for i in self.proto.graph.input if i.name not in initializers]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.proto.graph.output]


def default_domain_opset(proto: onnx.ModelProto) -> int:
    """The opset of the default (``ai.onnx``) domain, 0 when the model imports none."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def resolve_model_path(path: str | os.PathLike[str]) -> Path:
    """Accept a model file or a test-case folder holding ``model.onnx``."""
    model_path = Path(path)
    if model_path.is_dir():
        candidate = model_path / "model.onnx"
        if not candidate.is_file():
            raise InputFileError(f"{model_path} is a folder without model.onnx", "pass the .onnx file itself")
        return candidate
    if not model_path.exists():
        raise InputFileError(f"model file {model_path} does not exist", "check the path")
    return model_path


def load_onnx(path: str | os.PathLike[str], check: bool = True, weights: bool = True) -> OnnxModel:
    """Parse an ONNX file without executing anything in it.

    ``weights=False`` leaves the bytes of the large initializers in the file (``convkit.graph.light``): they
    appear as external data in the model's own file, which ``external_files`` then lists. For callers that
    read no weight from the proto (onnxruntime reads the file itself): the proto holds no copy of them.

    Raises:
        InputFileError: the path is missing or unreadable.
        ModelLoadError: the bytes are not a valid ONNX model (truncated, corrupt, random) or fail the checker.
        UnsafeModelError: an external-data location escapes the model's folder.
    """
    import onnx

    from convkit.graph.light import checkable

    model_path = resolve_model_path(path)
    proto = None if weights else _load_light(model_path)
    light = proto is not None
    if proto is None:
        proto = _parse(model_path)
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelLoadError(
            f"{model_path} is not an ONNX model (no IR version or graph in it)",
            "pass a .onnx file produced by an exporter",
        )
    invalid_text = first_invalid_text(proto)
    if invalid_text is not None:
        raise ModelLoadError(
            f"{model_path} is corrupt: {invalid_text} is not valid UTF-8 text", "re-export or re-download it"
        )
    check_data_types(proto, model_path)
    external = check_external_data(proto, model_path.parent)
    if check:
        try:
            # NOTE: why the path when data is external: the checker resolves external locations against
            # the model's folder only when given the path (which also works past 2 GB).
            if light:
                onnx.checker.check_model(checkable(proto, model_path.name))
            else:
                onnx.checker.check_model(str(model_path) if external else proto)
        except (onnx.checker.ValidationError, UnicodeDecodeError) as exc:
            # NOTE: why UnicodeDecodeError: the checker's message crosses into Python as UTF-8; should it
            # quote bytes that are not (first_invalid_text refuses the fields it knows beforehand), that
            # is still the file's fault, not convkit's
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{model_path} fails the ONNX checker: {first}") from exc
    return OnnxModel(path=model_path, proto=proto, external_files=external)


def _parse(model_path: Path) -> onnx.ModelProto:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        data = model_path.read_bytes()
    except OSError as exc:
        raise InputFileError(f"cannot read {model_path}: {exc.strerror}") from exc
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"{model_path} is not a valid ONNX model: the protobuf does not parse ({exc}); "
            "the file is truncated or corrupt",
            "re-export or re-download it",
        ) from exc
    return proto


def _load_light(model_path: Path) -> onnx.ModelProto | None:
    from convkit.graph.light import load_light

    try:
        return load_light(model_path)
    except OSError:
        return None  # the full read says what is wrong


def first_invalid_text(message: Any, where: str = "model") -> str | None:
    """Where the first text field (a protobuf ``string``) of ``message`` holds bytes that are not valid UTF-8
    (``"model.graph.node[3].name"``), or ``None``.

    NOTE: why: onnx.proto's ``string`` fields are proto2, which does not validate UTF-8 when parsing;
    protobuf then hands back ``bytes`` where every caller expects ``str``, and each use fails differently
    (a TypeError comparing names, a UnicodeDecodeError in the checker). One walk refuses the file instead.
    """
    for descriptor, value in message.ListFields():
        repeated = _is_repeated(descriptor)
        if descriptor.type == descriptor.TYPE_STRING:
            for index, text in enumerate(value if repeated else [value]):
                if isinstance(text, bytes):
                    return f"{where}.{descriptor.name}" + (f"[{index}]" if repeated else "")
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            named = [(f"[{k}]", item) for k, item in enumerate(value)] if repeated else [("", value)]
            for suffix, item in named:
                found = first_invalid_text(item, f"{where}.{descriptor.name}{suffix}")
                if found is not None:
                    return found
    return None


def _is_repeated(descriptor: Any) -> bool:
    # NOTE: why both: protobuf 7 dropped ``label`` for ``is_repeated``, which older releases lack
    if hasattr(descriptor, "is_repeated"):
        return bool(descriptor.is_repeated)
    return bool(descriptor.label == descriptor.LABEL_REPEATED)


def check_data_types(proto: onnx.ModelProto, model_path: Path) -> None:
    """Refuse a tensor or typed value whose element type ONNX does not define.

    NOTE: why here: the checker lets an unknown ``data_type`` through (it is an int on the wire), and then
    every reader that maps it to a numpy dtype fails with a bare KeyError.

    Raises:
        ModelLoadError: naming the tensor or value and its type number.
    """
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    known = set(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}
    for tensor in _get_all_tensors(proto):
        if tensor.data_type not in known:
            raise ModelLoadError(
                f"{model_path} is corrupt: tensor {tensor.name!r} has unknown data type {tensor.data_type}",
                "re-export or re-download it",
            )
    for graph in _all_graphs(proto.graph):
        for value in [*graph.input, *graph.output, *graph.value_info]:
            bad = _unknown_elem_type(value.type, known | {onnx.TensorProto.UNDEFINED})
            if bad is not None:
                raise ModelLoadError(
                    f"{model_path} is corrupt: value {value.name!r} has unknown data type {bad}",
                    "re-export or re-download it",
                )


def _all_graphs(graph: Any) -> list[Any]:
    """``graph`` and every subgraph in its nodes' attributes (Loop and If bodies), recursively."""
    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for sub in [*subgraphs, *attribute.graphs]:
                found.extend(_all_graphs(sub))
    return found


def _unknown_elem_type(type_proto: Any, known: set[int]) -> int | None:
    """The first element type in ``type_proto`` (tensor, sequence, optional, map) not in ``known``."""
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem_type = int(getattr(type_proto, kind).elem_type)
        return None if elem_type in known else elem_type
    if kind in ("sequence_type", "optional_type"):
        return _unknown_elem_type(getattr(type_proto, kind).elem_type, known)
    if kind == "map_type":
        key = int(type_proto.map_type.key_type)
        return key if key not in known else _unknown_elem_type(type_proto.map_type.value_type, known)
    return None


def check_external_data(proto: onnx.ModelProto, base_dir: Path) -> list[str]:
    """Return the external-data files a model references, refusing any location outside ``base_dir``.

    NOTE: why: a location such as ``../../home/user/.ssh/id_rsa`` or ``/etc/passwd`` makes a loader read
    (and a converter copy) files that have nothing to do with the model — a known attack on ONNX loaders.
    """
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    files: list[str] = []
    for tensor in _get_all_tensors(proto):
        if not uses_external_data(tensor):
            continue
        external_data_range(tensor, base_dir)
        location = _external_entries(tensor)["location"]
        if location not in files:
            files.append(location)
    return files


def _external_entries(tensor: Any) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def external_data_range(
    tensor: Any, base_dir: Path, where: str = "the model's folder"
) -> tuple[Path, int, int | None]:
    """The file, offset and length (``None``: to the end) of an external tensor's data.

    Args:
        tensor: an ``onnx.TensorProto`` whose data is external.
        base_dir: the folder its location is relative to, and must stay in.
        where: how messages name ``base_dir``.

    Raises:
        ModelLoadError: no location, or an offset or length that is not a byte range of the file.
        UnsafeModelError: the location escapes ``base_dir`` (absolute, ``..``, a link out).
        InputFileError: the file is missing.
    """
    entries = _external_entries(tensor)
    location = entries.get("location", "")
    if not location:
        raise ModelLoadError(f"tensor {tensor.name!r} is marked external but names no location")
    base = base_dir.resolve()
    if "\0" in location or os.path.isabs(location) or ".." in Path(location).parts:
        resolved = None
    else:
        resolved = (base / location).resolve()
    if resolved is None or not resolved.is_relative_to(base):
        raise UnsafeModelError(
            f"tensor {tensor.name!r} reads external data from {location!r}, outside {where}",
            "external data must sit beside the file that refers to it; refusing to load it",
        )
    if not resolved.is_file():
        raise InputFileError(
            f"external data file {resolved} (tensor {tensor.name!r}) is missing", "copy it beside the model"
        )
    offset = _byte_count(entries.get("offset") or "0", "offset", tensor)
    length = None if not entries.get("length") else _byte_count(entries["length"], "length", tensor)
    size = resolved.stat().st_size
    if offset + (length or 0) > size:
        end = offset + (length or 0)
        raise ModelLoadError(
            f"tensor {tensor.name!r} reads bytes {offset:,} to {end:,} of {resolved.name}, "
            f"which holds {size:,}",
            "the model and its external data do not belong together; re-export them",
        )
    return resolved, offset, length


def _byte_count(text: str, key: str, tensor: Any) -> int:
    if not text.isdigit():
        raise ModelLoadError(f"tensor {tensor.name!r} has external data {key} {text!r}, not a byte count")
    return int(text)


def upgrade_opset(
    proto: onnx.ModelProto,
    target: int = UPGRADE_TARGET_OPSET,
    static_shapes: dict[str, tuple[int, ...]] | None = None,
) -> onnx.ModelProto:
    """Convert ``proto`` to opset ``target`` with onnx's version converter, in memory.

    The converter's broadcast adapters need static shapes; when it refuses symbolic dimensions and
    ``static_shapes`` (input name -> shape) is given, the inputs are pinned to those shapes for a retry.
    """
    import onnx
    from onnx import version_converter

    try:
        return version_converter.convert_version(proto, target)
    except Exception as first_error:  # the converter raises bare RuntimeError/IndexError/...
        if not static_shapes:
            raise UnsupportedModelError(
                f"opset {default_domain_opset(proto)} cannot be upgraded to {target}: {first_error}"
            ) from first_error
        pinned = onnx.ModelProto()
        pinned.CopyFrom(proto)
        for value in pinned.graph.input:
            if value.name in static_shapes:
                dims = value.type.tensor_type.shape.dim
                for dim, size in zip(dims, static_shapes[value.name], strict=False):
                    dim.Clear()
                    dim.dim_value = int(size)
        try:
            return version_converter.convert_version(pinned, target)
        except Exception as exc:
            raise UnsupportedModelError(
                f"opset {default_domain_opset(proto)} cannot be upgraded to {target}: {exc}"
            ) from exc
