"""Theano (as PyTensor) through its own environment, as a user types the commands (real PyTensor, convkit's
converter and onnxruntime; no mocks). Skipped with the reason when the environment is not created."""

from __future__ import annotations

import json
import pickle
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
)

from convkit.frontends._worker.envs import unavailable_reason

_REASON = unavailable_reason("theano")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.theano

MODELS = ROOT / "fixtures" / "models" / "theano_models.py"
BROKEN = ROOT / "tests" / "frontends" / "theano" / "broken_models.py"
SPECS = {
    "reference_cnn": ["x:batch,1,28,28"],
    "conv_two_heads": ["image:batch,2,10,10", "features:batch,5"],
}


def _inputs(specs: list[str]) -> list[str]:
    return [arg for spec in specs for arg in ("--input", spec)]


def _export(factory: str, target, run=run_convkit) -> None:
    done = run(
        "export", f"{MODELS}:{factory}", "--framework", "theano", *_inputs(SPECS[factory]), "-o", str(target)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with convkit-pytensor" in done.stdout and "PASS" in done.stdout


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The reference CNN exported from its factory, with a dynamic batch."""
    target = tmp_path_factory.mktemp("theano_cnn") / "model.onnx"
    # NOTE: why a fresh process: this framework's one end-to-end run of ``python -m convkit``.
    _export("reference_cnn", target, run=run_convkit_process)
    return target


@pytest.mark.parametrize("factory", ["reference_cnn", "conv_two_heads"])
def test_export_and_verify_at_batch_1_and_3(cnn, tmp_path, factory):
    target = cnn if factory == "reference_cnn" else tmp_path / "model.onnx"
    if factory != "reference_cnn":
        _export(factory, target)
    model = onnx.load(str(target))
    assert all(value.type.tensor_type.shape.dim[0].dim_param == "batch" for value in model.graph.input)
    outputs = len(model.graph.output)
    assert [o.name for o in model.graph.output] == (["output"] if outputs == 1 else ["output_0", "output_1"])
    manifest = json.loads(target.with_suffix(".manifest.json").read_text())
    assert manifest["framework"] == "theano" and manifest["exporter"] == "convkit-pytensor"
    assert manifest["versions"]["pytensor"].startswith("3.")
    report_file = tmp_path / "report.json"
    done = run_convkit(
        "verify",
        str(target),
        "--source",
        f"{MODELS}:{factory}",
        "-f",
        "pytensor",
        "--report",
        str(report_file),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_file.read_text())
    assert report["passed"] and report["reference"].startswith("pytensor 3.")
    assert [o["data_set"] for o in report["outputs"]] == ["batch=1"] * outputs + ["batch=3"] * outputs
    assert [o["shape"][0] for o in report["outputs"]] == [1] * outputs + [3] * outputs
    assert max(o["max_abs_diff"] for o in report["outputs"]) < 1e-5


def test_shared_variables_become_named_initializers_and_tampering_fails_verify(cnn, tmp_path):
    tampered = tmp_path / "model.onnx"
    names = tampered_copy(cnn, "fc2.bias", tampered)
    assert {"conv1.weight", "conv2.bias", "fc1.weight", "fc2.bias"} <= names
    assert_verify_fails(tampered, f"{MODELS}:reference_cnn", "--framework", "theano")


@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("theano_weights")
    np.savez(folder / "wrong.npz", **{"conv1.weight": np.zeros((3, 3), np.float32), "extra": np.zeros(2)})
    with (folder / "params.pkl").open("wb") as handle:
        pickle.dump({"fc2.bias": np.zeros(10, np.float32)}, handle)
    return folder


@pytest.mark.parametrize(
    ("source", "extra", "message"),
    [
        (f"{BROKEN}:not_a_graph", [], "returned a dict with keys weights, not a PyTensor model"),
        (f"{BROKEN}:compiled_function", [], "returned a compiled pytensor.function, not its graph"),
        (f"{BROKEN}:sorts", [], "the converter has no rule for the PyTensor op SortOp"),
        (f"{MODELS}:reference_cnn", ["--input", "y:batch,1,28,28"], "the model's inputs are x, not y"),
        (f"{MODELS}:reference_cnn", ["--weights", "wrong.npz"], "missing conv1.bias"),
        (f"{MODELS}:reference_cnn", ["--weights", "params.pkl"], "unpickling can run code"),
        (str(MODELS), [], "is not a PyTensor model source"),
    ],
)
def test_bad_input_is_one_line_with_exit_2(tmp_path, bad_weights, source, extra, message):
    target = tmp_path / "model.onnx"
    extra = [str(bad_weights / arg) if arg.endswith((".npz", ".pkl")) else arg for arg in extra]
    if "--input" not in extra:
        extra += ["--input", "x:batch,4" if source.startswith(str(BROKEN)) else "x:batch,1,28,28"]
    done = run_convkit("export", source, "--framework", "theano", *extra, "-o", str(target))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0]
    assert all(line.startswith(("error: ", "hint: ")) for line in lines)
    assert "Traceback" not in done.stderr
    assert not target.exists()


def test_train_two_epochs_writes_canonical_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVKIT_PROGRESS", "lines")  # the epochs as progress lines
    weights = tmp_path / "w.npz"
    done = run_convkit("train", "--framework", "theano", "--epochs", "2", "-o", str(weights))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "theano: 2 epochs" in done.stdout
    accuracy = float(done.stdout.split("test accuracy ")[1].split(";")[0])
    assert accuracy > 0.9
    assert "val_accuracy" in done.stderr  # the worker's epochs reached the progress lines
    with np.load(weights) as archive:
        assert archive["fc1.weight"].shape == (128, 1600) and archive["fc2.weight"].shape == (10, 128)


def test_matrix_with_torch_agrees(tmp_path):
    assert_matrix_agrees_with_torch("theano", "convkit-pytensor", tmp_path)


def test_env_create_again_is_up_to_date_quickly():
    start = time.perf_counter()
    done = run_convkit("env", "create", "theano")
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    assert time.perf_counter() - start < 5
