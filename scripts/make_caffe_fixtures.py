"""Write the Caffe fixtures: ``fixtures/caffe/bn_residual.prototxt`` and ``bn_residual.caffemodel``, the net
of ``fixtures/models/caffe_models.py:bn_residual`` as Caffe keeps it on disk; and the real architectures of
``caffe_models.REAL_NETS`` (LeNet, AlexNet, SqueezeNet), each as one ``real/<net>.caffemodel`` with its deploy
prototxt declaring batch 1, 10 and 64 (``<net>_batch<N>.prototxt``, used with ``--weights <net>.caffemodel``).

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
# NOTE: why a folder of their own: ``fixtures/caffe`` itself is a folder source (one prototxt, one caffemodel)
REAL = OUT / "real"
# NOTE: why these: published deploy nets declare 1 (SqueezeNet), 10 (AlexNet, CaffeNet) or 64 (LeNet); the
# exported model must take any batch whatever the prototxt declares.
DECLARED_BATCHES = (1, 10, 64)


def declare_batch(text: str, batch: int) -> str:
    """``text`` with its Input layer's first dim set to ``batch``."""
    head, found, tail = text.partition("shape: { dim: ")
    if not found:
        raise ValueError("the prototxt has no Input layer written as 'shape: { dim: N ...'")
    return f"{head}{found}{batch}{tail[tail.index(' ') :]}"


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
    REAL.mkdir(parents=True, exist_ok=True)
    text, blobs = models.bn_residual()
    net = text_format.Parse(text, proto.messages().NetParameter())
    (OUT / "bn_residual.prototxt").write_text(text, encoding="utf-8")
    (OUT / "bn_residual.caffemodel").write_bytes(proto.caffemodel_bytes(net, blobs))
    for name in models.REAL_NETS:
        text, blobs = getattr(models, name)()
        net = text_format.Parse(text, proto.messages().NetParameter())
        (REAL / f"{name}.caffemodel").write_bytes(proto.caffemodel_bytes(net, blobs))
        for batch in DECLARED_BATCHES:
            (REAL / f"{name}_batch{batch}.prototxt").write_text(declare_batch(text, batch), encoding="utf-8")
    for path in sorted(p for p in OUT.rglob("*") if p.is_file()):
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
