"""``convkit demo``, the README's first command after setup: every bundled check runs and holds parity."""

import importlib.util

from conftest import run_convkit


def test_demo_exports_verifies_and_runs_everything_installed(tmp_path):
    done = run_convkit("demo", "--out-dir", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify reference_cnn" in done.stdout and "verify old_opset_mlp" in done.stdout
    for framework, module in (("torch", "torch"), ("tensorflow", "tensorflow"), ("jax", "jax")):
        if importlib.util.find_spec(module) is None:
            assert f"skip     {framework}" in done.stdout
            continue
        assert f"verify {framework} reference_cnn" in done.stdout
        model = tmp_path / "demo" / f"{framework}_reference_cnn" / "model.onnx"
        assert model.is_file() and (model.parent / "test_data_set_0" / "input_0.pb").is_file()
    if all(importlib.util.find_spec(m) for m in ("torch", "tensorflow")):
        assert "agree torch vs tensorflow" in done.stdout
    assert "FAIL" not in done.stdout
