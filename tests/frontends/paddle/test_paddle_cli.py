"""PaddlePaddle through its own environment, as a user types the commands (real Paddle, paddle2onnx and
onnxruntime; no mocks). Skipped with the reason when the environment is not created."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from conftest import (
    ROOT,
    assert_matrix_agrees_with_torch,
    assert_verify_fails,
    run_convkit,
    run_convkit_process,
    tampered_copy,
    verify_report,
)

from convkit.frontends._worker.envs import unavailable_reason

_REASON = unavailable_reason("paddle")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.paddle

MODELS = ROOT / "fixtures" / "models" / "paddle_models.py"
BROKEN = ROOT / "tests" / "frontends" / "paddle" / "broken_models.py"


def _export(source: str, spec: str, target, run=run_convkit) -> None:
    done = run("export", source, "--framework", "paddle", "--input", spec, "-o", str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with paddle2onnx" in done.stdout and "PASS" in done.stdout


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The reference CNN exported from its factory, with a dynamic batch."""
    target = tmp_path_factory.mktemp("paddle_cnn") / "model.onnx"
    # NOTE: why a fresh process: this framework's one end-to-end run of ``python -m convkit``.
    _export(f"{MODELS}:reference_cnn", "x:batch,1,28,28", target, run=run_convkit_process)
    return target


@pytest.mark.parametrize(
    ("factory", "spec"), [("reference_cnn", "x:batch,1,28,28"), ("layernorm_mlp", "x:batch,16")]
)
def test_export_and_verify_at_batch_1_and_3(cnn, tmp_path, factory, spec):
    target = cnn if factory == "reference_cnn" else tmp_path / "model.onnx"
    if factory != "reference_cnn":
        _export(f"{MODELS}:{factory}", spec, target)
    model = onnx.load(str(target))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in model.graph.output] == ["output"]
    manifest = json.loads(target.with_suffix(".manifest.json").read_text())
    assert manifest["framework"] == "paddle" and manifest["exporter"] == "paddle2onnx"
    assert manifest["versions"]["paddle"] and manifest["versions"]["paddle2onnx"]
    report = verify_report(
        target, f"{MODELS}:{factory}", "--framework", "paddle", report=tmp_path / "report.json"
    )
    assert report["passed"] and report["reference"].startswith("paddle 3.")
    assert [o["data_set"] for o in report["outputs"]] == ["batch=1", "batch=3"]
    assert [o["shape"][0] for o in report["outputs"]] == [1, 3]
    assert max(o["max_abs_diff"] for o in report["outputs"]) < 1e-5


def test_weights_become_named_initializers_and_tampering_fails_verify(cnn, tmp_path):
    tampered = tmp_path / "model.onnx"
    names = tampered_copy(cnn, "fc2.bias", tampered)
    assert {"conv1.weight", "fc1.weight", "fc2.bias"} <= names  # the state_dict's names
    assert_verify_fails(tampered, f"{MODELS}:reference_cnn", "--framework", "paddle")


def test_matrix_with_torch_agrees(tmp_path):
    assert_matrix_agrees_with_torch("paddle", "paddle2onnx", tmp_path)


def test_train_two_epochs_writes_canonical_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVKIT_PROGRESS", "lines")  # the epochs as progress lines
    weights = tmp_path / "w.npz"
    done = run_convkit("train", "--framework", "paddle", "--epochs", "2", "-o", str(weights))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "paddle: 2 epochs" in done.stdout
    accuracy = float(done.stdout.split("test accuracy ")[1].split(";")[0])
    assert accuracy > 0.9
    assert "val_accuracy" in done.stderr  # the worker's epochs reached the progress lines
    with np.load(weights) as archive:
        assert archive["fc1.weight"].shape == (128, 1600) and archive["fc2.weight"].shape == (10, 128)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("raises", "RuntimeError: the factory broke on purpose"),
        ("segfaults", "crashed with SIGSEGV (exit code 139)"),
        ("not_a_layer", "made a dict, not a paddle.nn.Layer"),
    ],
)
def test_worker_errors_and_crashes_are_one_line_with_exit_2(tmp_path, factory, message):
    target = tmp_path / "model.onnx"
    done = run_convkit(
        "export", f"{BROKEN}:{factory}", "--framework", "paddle", "--input", "x:batch,4", "-o", str(target)
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0]
    assert all(line.startswith(("error: ", "hint: ")) for line in lines)
    assert "Traceback" not in done.stderr
    assert not target.exists()


def test_env_create_again_is_up_to_date_quickly():
    start = time.perf_counter()
    done = run_convkit("env", "create", "paddle")
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    assert time.perf_counter() - start < 5
    listed = run_convkit("env", "list")
    assert listed.returncode == 0 and "paddle" in listed.stdout and "ready" in listed.stdout
