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


def write_manifest(model_path: Path, fields: dict[str, Any]) -> Path:
    """Write the manifest atomically; returns its path. ``fields`` adds to the standard keys."""
    import onnx

    from convkit import __version__

    data: dict[str, Any] = {
        "model": model_path.name,
        "sha256": sha256_file(model_path),
        "versions": {
            "convkit": __version__,
            "onnx": onnx.__version__,
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
