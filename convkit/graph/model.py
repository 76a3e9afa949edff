"""Load ONNX files safely: clear errors for missing, truncated or corrupt files; external data confined to
the model's folder; old opsets upgraded on request."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

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


def load_onnx(path: str | os.PathLike[str], check: bool = True) -> OnnxModel:
    """Parse an ONNX file without executing anything in it.

    Raises:
        InputFileError: the path is missing or unreadable.
        ModelLoadError: the bytes are not a valid ONNX model (truncated, corrupt, random) or fail the checker.
        UnsafeModelError: an external-data location escapes the model's folder.
    """
    import onnx
    from google.protobuf.message import DecodeError

    model_path = resolve_model_path(path)
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
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelLoadError(
            f"{model_path} is not an ONNX model (no IR version or graph in it)",
            "pass a .onnx file produced by an exporter",
        )
    external = check_external_data(proto, model_path.parent)
    if check:
        try:
            # NOTE: why the path when data is external: the checker resolves external locations against
            # the model's folder only when given the path (which also works past 2 GB).
            onnx.checker.check_model(str(model_path) if external else proto)
        except onnx.checker.ValidationError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{model_path} fails the ONNX checker: {first}") from exc
    return OnnxModel(path=model_path, proto=proto, external_files=external)


def check_external_data(proto: onnx.ModelProto, base_dir: Path) -> list[str]:
    """Return the external-data files a model references, refusing any location outside ``base_dir``.

    NOTE: why: a location such as ``../../home/user/.ssh/id_rsa`` or ``/etc/passwd`` makes a loader read
    (and a converter copy) files that have nothing to do with the model — a known attack on ONNX loaders.
    """
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    base = base_dir.resolve()
    files: list[str] = []
    for tensor in _get_all_tensors(proto):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        if not location:
            raise ModelLoadError(f"tensor {tensor.name!r} is marked external but names no location")
        resolved = (base / location).resolve()
        if os.path.isabs(location) or ".." in Path(location).parts or not resolved.is_relative_to(base):
            raise UnsafeModelError(
                f"tensor {tensor.name!r} reads external data from {location!r}, outside the model's folder",
                "external data must sit beside the model; refusing to load it",
            )
        if not resolved.is_file():
            raise InputFileError(
                f"external data file {resolved} (tensor {tensor.name!r}) is missing",
                "copy it beside the model",
            )
        if location not in files:
            files.append(location)
    return files


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
