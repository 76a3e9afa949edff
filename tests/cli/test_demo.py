"""``convkit demo``, the README's first command after setup: every bundled check runs and holds parity."""

import itertools

from conftest import run_convkit

from convkit.frontends import load_frontend_class
from convkit.reference.demo import demo_frameworks


def test_demo_exports_verifies_and_runs_everything_installed(tmp_path):
    done = run_convkit("demo", "--out-dir", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify reference_cnn" in done.stdout and "verify old_opset_mlp" in done.stdout
    frameworks = demo_frameworks()
    assert {"torch", "tensorflow", "jax", "paddle", "mxnet", "chainer", "caffe", "theano"} <= set(frameworks)
    ready = [name for name in frameworks if load_frontend_class(name).is_available() is None]
    for framework in frameworks:
        if framework not in ready:
            assert f"skip     {framework}" in done.stdout
            continue
        assert f"verify {framework} reference_cnn" in done.stdout
        model = tmp_path / "demo" / f"{framework}_reference_cnn" / "model.onnx"
        assert model.is_file() and (model.parent / "test_data_set_0" / "input_0.pb").is_file()
    for b in ready[1:]:
        assert f"agree {ready[0]} vs {b}" in done.stdout
    if len(ready) > 2:
        pairs = len(list(itertools.combinations(ready, 2)))
        assert f"agree all {pairs} pairs" in done.stdout
    assert "FAIL" not in done.stdout
