"""Where a command may write: never over one of its own inputs, never over something that is not a file.

Every command that writes (``run -o``, ``export -o/--report``, ``verify --report/--junit``, ``quantize -o``,
``reduce -o`` ...) checks its output paths against the paths it reads before it starts. Replacing an
unrelated file the user named stays allowed: that is what ``-o`` means.

NOTE: why by identity (same inode) and by containment: ``-o ./m.onnx`` and ``-o m.onnx`` are one file, a hard
link is one file under two names, and a folder output (``reduce -o CASE``) that holds an input would replace
it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from convkit.errors import ConvkitError

# a folder input is expanded to the files in it down to this depth (a test case: model + data sets)
_FOLDER_DEPTH = 2


class OutputPathError(ConvkitError):
    """An output path the command must not write: one of its inputs, a folder, a device, nothing at all."""


def check_outputs(
    files: Mapping[str, str | os.PathLike[str] | None],
    reads: Iterable[str | os.PathLike[str] | None],
    folders: Mapping[str, str | os.PathLike[str] | None] | None = None,
) -> None:
    """Refuse output paths that would destroy an input or are not writable files (or folders).

    Args:
        files: option label (``-o``, ``--report``) -> the file it names (``None``: not given).
        reads: every path the command reads: files, folders (their files count), ``file.py:factory``
            sources (the file counts).
        folders: option label -> a folder the command fills (``reduce -o``, ``matrix --out-dir``).

    Raises:
        OutputPathError: the first output that may not be written, naming it and what it collides with.
    """
    inputs = _input_files(reads)
    for label, given in files.items():
        if given is None:
            continue
        path = _nonempty(label, given)
        if path.exists() and not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise OutputPathError(f"{label} {given} is {kind}", f"give a file path for {label}")
        clash = _same_file(path, inputs)
        if clash is not None:
            raise OutputPathError(
                f"{label} {given} is an input of this command ({clash}): writing it would destroy it",
                f"give {label} another path",
            )
    for label, given in (folders or {}).items():
        if given is None:
            continue
        folder = _nonempty(label, given)
        if folder.exists() and not folder.is_dir():
            raise OutputPathError(
                f"{label} {given} is not a folder", f"give a new or existing folder for {label}"
            )
        root = folder.resolve()
        held = next((p for p in inputs if p.resolve().is_relative_to(root)), None)
        if held is not None:
            raise OutputPathError(
                f"{label} {given} holds an input of this command ({held}): writing there would replace it",
                f"give {label} another folder",
            )


def _nonempty(label: str, given: str | os.PathLike[str]) -> Path:
    if not str(given).strip():
        raise OutputPathError(f"{label} is empty", f"give {label} a path")
    return Path(given)


def _input_files(reads: Iterable[str | os.PathLike[str] | None]) -> list[Path]:
    files: list[Path] = []
    for read in reads:
        if read is None:
            continue
        path = Path(read)
        if not path.exists() and ":" in str(read):
            path = Path(str(read).rsplit(":", 1)[0])  # file.py:factory
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(_files_below(path, _FOLDER_DEPTH))
    return files


def _files_below(folder: Path, depth: int) -> list[Path]:
    found: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.is_file():
            found.append(entry)
        elif entry.is_dir() and depth > 1:
            found.extend(_files_below(entry, depth - 1))
    return found


def _same_file(path: Path, inputs: Iterable[Path]) -> Path | None:
    if not path.exists():
        return None
    for candidate in inputs:
        try:
            if os.path.samefile(path, candidate):
                return candidate
        except OSError:
            continue
    return None
