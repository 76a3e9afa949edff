"""Write the Caffe fixtures: ``fixtures/caffe/bn_residual.prototxt`` and ``bn_residual.caffemodel``, the net
of ``fixtures/models/caffe_models.py:bn_residual`` as Caffe keeps it on disk.

Run with the Caffe environment's Python (it needs caffe2onnx's Caffe messages, no Caffe):

    .venv/bin/convkit env create caffe
    .convkit-envs/caffe/bin/python scripts/make_caffe_fixtures.py

The output is the same bytes on every run (seeded weights, protobuf's deterministic serialization).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "caffe"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    """Write the fixtures and print what was written."""
    from google.protobuf import text_format

    proto = _load("convkit_worker_caffe_proto", ROOT / "convkit" / "frontends" / "caffe" / "env" / "proto.py")
    models = _load("caffe_models", ROOT / "fixtures" / "models" / "caffe_models.py")
    OUT.mkdir(parents=True, exist_ok=True)
    text, blobs = models.bn_residual()
    net = text_format.Parse(text, proto.messages().NetParameter())
    (OUT / "bn_residual.prototxt").write_text(text, encoding="utf-8")
    (OUT / "bn_residual.caffemodel").write_bytes(proto.caffemodel_bytes(net, blobs))
    for path in sorted(OUT.iterdir()):
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
