"""Files convkit reads and writes: atomic writes, the ONNX ``test_data_set_N`` layout, ``.npz``/``.npy`` data.

The standard layout (used by the ONNX backend tests and onnxruntime's ``onnx_test_runner``)::

    case_dir/model.onnx
    case_dir/test_data_set_0/input_0.pb, input_1.pb, ..., output_0.pb, ...

Each ``.pb`` is a serialized ``onnx.TensorProto`` whose ``name`` is the graph input or output name.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from convkit.core.inputs import check_fits_in_memory
from convkit.errors import DataError, InputFileError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# NOTE: why: mkstemp/mkdtemp create 0600/0700 entries; a model or report must get the usual permissions.
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()

_DATA_SET_RE = re.compile(r"^test_data_set_(\d+)$")
_TENSOR_RE = re.compile(r"^(input|output)_(\d+)\.pb$")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` in one rename.

    NOTE: why beside the target: ``os.replace`` is atomic only within one file system, and an interrupted
    command must never leave a half-written model, data file or report where the user expects the real one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    write_bytes_atomic(target, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``target`` (a folder) once the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, _DIR_MODE)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike[str]) -> Iterator[Path]:
    """A hidden temporary folder inside ``parent`` (same file system), removed with whatever is left in it."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convkit-staging.", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_into(staging: Path, target_dir: Path, last: str) -> None:
    """Move every file of ``staging`` into ``target_dir`` (each by an atomic rename), ``last`` at the end so
    that it never appears before the files it refers to."""
    names = sorted(p.name for p in staging.iterdir() if p.is_file())
    for name in [n for n in names if n != last] + [last]:
        os.chmod(staging / name, _FILE_MODE)
        os.replace(staging / name, target_dir / name)


def save_npz_atomic(target: str | os.PathLike[str], arrays: Mapping[str, Any]) -> None:
    """Save named arrays as an uncompressed ``.npz``, atomically."""
    buffer = io.BytesIO()
    named: dict[str, Any] = {name: np.asarray(value) for name, value in arrays.items()}
    np.savez(buffer, **named)
    write_bytes_atomic(target, buffer.getvalue())


def _tensor_proto(array: Any, name: str) -> bytes:
    from onnx import numpy_helper

    return bytes(numpy_helper.from_array(np.asarray(array), name=name).SerializeToString())


def write_test_data_set(
    case_dir: str | os.PathLike[str],
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any] | None = None,
    index: int = 0,
) -> Path:
    """Write ``case_dir/test_data_set_<index>/`` with ``input_K.pb`` and ``output_K.pb`` (in the given order).

    Returns the data set folder. The folder appears complete or not at all.
    """
    target = Path(case_dir) / f"test_data_set_{index}"
    with atomic_dir(target) as tmp:
        for k, (name, value) in enumerate(inputs.items()):
            (tmp / f"input_{k}.pb").write_bytes(_tensor_proto(value, name))
        for k, (name, value) in enumerate((outputs or {}).items()):
            (tmp / f"output_{k}.pb").write_bytes(_tensor_proto(value, name))
    return target


def read_tensor_pb(path: Path) -> tuple[str, np.ndarray]:
    """Read one serialized ``TensorProto``; returns ``(name, array)``.

    A tensor whose data is external is read from a file beside the ``.pb`` (never outside its folder).

    Raises:
        DataError: the file is not a valid TensorProto (corrupt, an unknown data type, data that does not
            match its dims).
        UnsafeModelError: its external data lies outside the ``.pb``'s folder.
        InputFileError: the file or its external data cannot be read.
    """
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper

    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
    except DecodeError as exc:
        raise DataError(
            f"{path} is not a valid ONNX TensorProto ({exc})", "re-create it with `convkit export`"
        ) from exc
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror}") from exc
    if tensor.data_type not in onnx.TensorProto.DataType.values() or tensor.data_type == 0:
        raise DataError(
            f"{path} is not a valid ONNX TensorProto (unknown data type {tensor.data_type})",
            "re-create it with `convkit export`",
        )
    if _uses_external_data(tensor):
        _load_external_tensor(tensor, path)
    try:
        array = numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{path} is not a valid ONNX TensorProto ({exc})", "re-create it with `convkit export`"
        ) from exc
    # NOTE: why: protobuf hands back bytes, not str, for a name that is not valid UTF-8
    if not isinstance(tensor.name, str):
        raise DataError(f"{path} names its tensor in bytes that are not valid UTF-8: {tensor.name!r}")
    return tensor.name, array


def _uses_external_data(tensor: Any) -> bool:
    import onnx

    return bool(tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL)


def _load_external_tensor(tensor: Any, path: Path) -> None:
    """Read an external tensor's bytes into it, from a file in the ``.pb``'s own folder.

    NOTE: why convkit reads the bytes itself: onnx's loader resolves the location against a base folder
    that defaults to the current directory, and reads ``length`` bytes without checking them against the
    file; here the location is confined to the data set's folder (as a model's is to its folder, see
    ``check_external_data``) and the range to the file.
    """
    import onnx

    from convkit.graph.model import external_data_range

    source, offset, length = external_data_range(tensor, path.parent, f"{path.name}'s folder")
    try:
        with open(source, "rb") as file:
            file.seek(offset)
            data = file.read(-1 if length is None else length)
    except OSError as exc:
        raise InputFileError(f"cannot read {source}: {exc.strerror}") from exc
    tensor.raw_data = data
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


def _indexed(folder: Path, kind: str) -> list[Path]:
    found = []
    for entry in folder.iterdir():
        match = _TENSOR_RE.match(entry.name)
        if match and match.group(1) == kind:
            found.append((int(match.group(2)), entry))
    return [path for _, path in sorted(found)]


def read_test_data_set(
    folder: str | os.PathLike[str],
    input_names: Sequence[str] = (),
    output_names: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read one ``test_data_set_N`` folder into ``(inputs, outputs)`` dicts.

    Tensors without a name take the model's name at the same position (``input_names``/``output_names``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"{folder} is not a folder", "pass a test_data_set_N folder")

    def load(kind: str, names: Sequence[str]) -> dict[str, np.ndarray]:
        result: dict[str, np.ndarray] = {}
        for k, path in enumerate(_indexed(folder, kind)):
            name, array = read_tensor_pb(path)
            if not name:
                if k >= len(names):
                    raise DataError(f"{path} has no tensor name and the model has no {kind} number {k}")
                name = names[k]
            result[name] = array
        return result

    inputs = load("input", input_names)
    if not inputs:
        raise DataError(f"{folder} holds no input_N.pb files", "is it a test_data_set_N folder?")
    return inputs, load("output", output_names)


def list_test_data_sets(case_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``test_data_set_N`` folders of a test case, in numeric order."""
    found = []
    for entry in Path(case_dir).iterdir():
        match = _DATA_SET_RE.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


def load_arrays(path: str | os.PathLike[str], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Load model inputs from an ``.npz`` (keys are input names), an ``.npy`` (single-input models) or a
    ``test_data_set_N`` folder. Pickled objects are never loaded."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"data file {path} does not exist", "check the path given to --data")
    if path.is_dir():
        return read_test_data_set(path, input_names)[0]
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            _check_npz_headers(path)
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        if suffix == ".npy":
            with open(path, "rb") as file:
                _check_npy_header(file, str(path), path.stat().st_size, 0)
            array = np.load(path, allow_pickle=False)
            if len(input_names) != 1:
                raise DataError(
                    f"{path} holds one array but the model has {len(input_names)} inputs "
                    f"({', '.join(input_names)})",
                    "use an .npz whose keys are the input names",
                )
            return {input_names[0]: array}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        reason = "it holds pickled objects, which convkit never loads" if "pickle" in str(exc) else exc
        raise DataError(f"cannot read {path}: {reason}", "write it with numpy.savez / numpy.save") from exc
    raise InputFileError(
        f"{path} is neither .npz, .npy nor a test_data_set_N folder", "convert the data with numpy.savez"
    )


def _check_npz_headers(path: Path) -> None:
    """Check every array of an ``.npz`` as ``_check_npy_header`` does, and all of them together against
    the memory."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                # NOTE: why counted: numpy hands back any other member as its bytes, all of them
                total += info.file_size
                check_fits_in_memory(total, f"loading {path}[{info.filename}]", "pass smaller data")
                continue
            with archive.open(info) as member:
                name = f"{path}[{info.filename.removesuffix('.npy')}]"
                total = _check_npy_header(member, name, info.file_size, total)


def _check_npy_header(file: IO[bytes], name: str, size: int, before: int) -> int:
    """Read the header of the ``.npy`` in ``file`` (``size`` bytes) and refuse an array that cannot be
    loaded: more bytes than this machine's memory (with ``before`` bytes already loaded), or more than the
    file holds. Returns ``before`` plus the array's bytes.

    NOTE: why before numpy reads it: ``np.load`` allocates what the header declares before it reads the
    data, so a corrupt or hostile header of a few bytes asks for terabytes (a MemoryError, or "array is too
    big"); the header alone says how much is coming.
    """
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(file)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(file)
    else:
        # NOTE: why not checked: numpy offers no public reader for later versions (3.0, utf-8 names);
        # np.load reads them, and refuses what it cannot.
        return before
    nbytes = math.prod(shape) * dtype.itemsize
    with_before = f", after {before:,} bytes of arrays before it" if before else ""
    check_fits_in_memory(
        before + nbytes,
        f"loading {name} (an array of shape {tuple(shape)}, {dtype}{with_before})",
        "the file is corrupt, or meant for a bigger machine: pass smaller data",
    )
    held = size - file.tell()
    if nbytes > held and not dtype.hasobject:
        raise DataError(
            f"{name} declares an array of shape {tuple(shape)} ({dtype}, {nbytes:,} bytes) but holds "
            f"{max(held, 0):,} bytes of data: it is truncated or corrupt",
            "write it again with numpy.save / numpy.savez",
        )
    return before + nbytes
