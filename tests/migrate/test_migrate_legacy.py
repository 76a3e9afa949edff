"""Every framework's reference CNN, exported by convkit, migrated to PyTorch: parity with its onnxruntime run,
then a fine-tune on the digits (the README's "Leaving a dead framework" walk-through, for every framework)."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES, run_convkit
from test_migrate import _package, fine_tune

from convkit.frontends import get_frontend

pytest.importorskip("torch")

FRAMEWORKS = ("caffe", "mxnet", "chainer", "theano", "paddle", "tensorflow", "jax", "torch")
EVERY_FRAMEWORK = [pytest.param(name, marks=getattr(pytest.mark, name)) for name in FRAMEWORKS]
MODULES = {"tensorflow": "keras_models"}  # the fixture module, when not named after the framework


@pytest.mark.slow
@pytest.mark.parametrize("framework", EVERY_FRAMEWORK)
def test_a_reference_cnn_migrates_with_parity_and_fine_tunes(tmp_path, framework):
    exported = tmp_path / "model.onnx"
    source = f"{FIXTURES}/models/{MODULES.get(framework, f'{framework}_models')}.py:reference_cnn"
    channels_last = get_frontend(framework).reference_layout == "NHWC"  # type: ignore[attr-defined]
    shape = "x:batch,28,28,1" if channels_last else "x:batch,1,28,28"
    done = run_convkit("export", source, "--framework", framework, "--input", shape, "-o", str(exported))
    assert done.returncode == 0, done.stdout + done.stderr

    out = tmp_path / "migrated"
    done = run_convkit("migrate", str(exported), "--to", "torch", "-o", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and len(report["outputs"]) >= 2  # two batch sizes
    assert max(o["max_abs_diff"] for o in report["outputs"]) < 1e-5

    model = _package(out).load()
    before, after, held_out = fine_tune(model, epochs=5, channels_last=channels_last)
    assert after < before and held_out >= 0.98
