"""The manifest written beside every exported model: what made it, from what, with which specs."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from convkit.core.artifacts import write_text_atomic


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_path_for(model_path: Path) -> Path:
    """``out/model.onnx`` -> ``out/model.manifest.json``."""
    return model_path.with_name(f"{model_path.stem}.manifest.json")


def test_data_folder(model_path: Path) -> Path:
    """Where a model's ``test_data_set_N`` folders live: beside ``model.onnx`` (the folder is then an ONNX
    test case, the layout onnxruntime's test runner and the ONNX backend tests read), else in
    ``<stem>.test_data/`` beside the model.

    NOTE: why a folder per model: two models exported into one folder must not share (and overwrite) one
    ``test_data_set_0``; only the model named ``model.onnx`` owns the folder's own data sets.
    """
    if model_path.name == "model.onnx":
        return model_path.parent
    return model_path.with_name(f"{model_path.stem}.test_data")


def read_manifest(model_path: Path) -> dict[str, Any] | None:
    """The manifest written beside ``model_path`` when it was exported, ``None`` when there is none or it
    cannot be read."""
    try:
        data = json.loads(manifest_path_for(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def folder_digest(folder: Path) -> str:
    """One sha256 over a folder's files (names and contents, in name order): a test data set's fingerprint."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def written_by_convkit(model_path: Path) -> bool:
    """Whether the file at ``model_path`` is the one its manifest records (same sha256)."""
    manifest = read_manifest(model_path)
    return manifest is not None and manifest.get("sha256") == sha256_file(model_path)


def write_manifest(model_path: Path, fields: dict[str, Any]) -> Path:
    """Write the manifest atomically; returns its path. ``fields`` adds to the standard keys."""
    import onnx
    import onnxruntime

    from convkit import __version__

    data: dict[str, Any] = {
        "model": model_path.name,
        "sha256": sha256_file(model_path),
        "versions": {
            "convkit": __version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }
    for key, value in fields.items():
        if key == "versions":
            data["versions"].update(value)
        else:
            data[key] = value
    target = manifest_path_for(model_path)
    write_text_atomic(target, json.dumps(data, indent=2) + "\n")
    return target
