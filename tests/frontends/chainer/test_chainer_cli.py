"""Chainer through its own environment, as a user types the commands (real Chainer, onnx-chainer and
onnxruntime; no mocks). Skipped with the reason when the environment is not created."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from conftest import (
    CANONICAL_WEIGHTS,
    FIXTURES,
    ROOT,
    assert_matrix_agrees_with_torch,
    assert_verify_fails,
    run_convkit,
    run_convkit_process,
    tampered_copy,
    verify_report,
)

from convkit.frontends._worker.envs import unavailable_reason

_REASON = unavailable_reason("chainer")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.chainer

MODELS = FIXTURES / "models" / "chainer_models.py"
BROKEN = ROOT / "tests" / "frontends" / "chainer" / "broken_models.py"


def _export(source: str, spec: str, target, run=run_convkit) -> None:
    done = run("export", source, "--framework", "chainer", "--input", spec, "-o", str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with onnx-chainer (opset 11)" in done.stdout and "PASS" in done.stdout


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The reference CNN exported from its factory, with a dynamic batch."""
    target = tmp_path_factory.mktemp("chainer_cnn") / "model.onnx"
    # NOTE: why a fresh process: this framework's one end-to-end run of ``python -m convkit``.
    _export(f"{MODELS}:reference_cnn", "x:batch,1,28,28", target, run=run_convkit_process)
    return target


@pytest.mark.parametrize(
    ("factory", "spec"), [("reference_cnn", "x:batch,1,28,28"), ("bn_branches", "x:batch,3,16,16")]
)
def test_export_and_verify_at_batch_1_and_3(cnn, tmp_path, factory, spec):
    target = cnn if factory == "reference_cnn" else tmp_path / "model.onnx"
    if factory != "reference_cnn":
        _export(f"{MODELS}:{factory}", spec, target)
    model = onnx.load(str(target))
    assert [i.name for i in model.graph.input] == ["x"]  # the weights are no inputs
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in model.graph.output] == ["output"]
    manifest = json.loads(target.with_suffix(".manifest.json").read_text())
    assert manifest["framework"] == "chainer" and manifest["exporter"] == "onnx-chainer"
    assert manifest["versions"]["chainer"] == "7.8.1" and manifest["versions"]["onnx-chainer"] == "1.6.0"
    report = verify_report(
        target, f"{MODELS}:{factory}", "--framework", "chainer", report=tmp_path / "report.json"
    )
    assert report["passed"] and report["reference"].startswith("chainer 7.8.1")
    assert [o["data_set"] for o in report["outputs"]] == ["batch=1", "batch=3"]
    assert [o["shape"][0] for o in report["outputs"]] == [1, 3]
    assert max(o["max_abs_diff"] for o in report["outputs"]) < 1e-5


def test_weights_become_named_initializers_and_tampering_fails_verify(cnn, tmp_path):
    tampered = tmp_path / "model.onnx"
    names = tampered_copy(cnn, "fc2/b", tampered)
    assert {"conv1/W", "conv1/b", "fc1/W", "fc2/b"} <= names  # save_npz's keys, the link paths
    assert_verify_fails(tampered, f"{MODELS}:reference_cnn", "--framework", "chainer")


def test_matrix_with_torch_agrees(tmp_path):
    assert_matrix_agrees_with_torch("chainer", "onnx-chainer", tmp_path)


def test_train_one_epoch_writes_canonical_weights_that_load_in_caffe_mxnet_and_theano(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVKIT_PROGRESS", "lines")  # the epochs as progress lines
    weights = tmp_path / "w.npz"
    done = run_convkit("train", "--framework", "chainer", "--epochs", "1", "-o", str(weights))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "chainer: 1 epochs" in done.stdout
    accuracy = float(done.stdout.split("test accuracy ")[1].split(";")[0])
    assert accuracy > 0.8  # one epoch over 1,437 digits; chance is 0.1
    assert "val_accuracy" in done.stderr  # the worker's epochs reached the progress lines
    with np.load(weights) as archive:
        assert archive["fc1.weight"].shape == (128, 1600) and archive["conv1.weight"].shape == (32, 1, 3, 3)

    # weights only, back into the other old frameworks: the same predictions on all 360 held-out digits
    others = [name for name in ("caffe", "mxnet", "theano") if unavailable_reason(name) is None]
    report = tmp_path / "matrix.json"
    done = run_convkit(
        "matrix", "--frameworks", ",".join(["chainer", *others]), "--weights", str(weights),
        "--samples", "360", "--out-dir", str(tmp_path / "matrix"), "--json", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(report.read_text())
    assert found["passed"] and found["samples"] == 360
    assert all(found["pairwise_max_abs_diff"]["chainer"][name] < 1e-5 for name in others)


@pytest.mark.parametrize(
    ("source", "extra", "message"),
    [
        (f"{BROKEN}:not_a_link", (), "made a dict, not a chainer.Link"),
        (f"{BROKEN}:unsupported", (), "onnx-chainer 1.6.0 cannot export the Chainer function Erf"),
        (
            f"{MODELS}:bn_branches",
            ("--weights", str(CANONICAL_WEIGHTS)),
            "do not fit",
        ),
        (f"{MODELS}:bn_branches", ("--input", "image:batch,3,16,16"), "the model's inputs are x, not image"),
        (str(FIXTURES / "chainer" / "bn_branches_seed1.npz"), (), "is weights, not a model"),
    ],
)
def test_bad_inputs_are_one_line_with_exit_2(tmp_path, source, extra, message):
    target = tmp_path / "model.onnx"
    given = extra if "--input" in extra else (*extra, "--input", "x:batch,4")
    done = run_convkit("export", source, "--framework", "chainer", *given, "-o", str(target))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0]
    assert all(line.startswith(("error: ", "hint: ")) for line in lines)
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())


def test_env_create_again_is_up_to_date_quickly():
    start = time.perf_counter()
    done = run_convkit("env", "create", "chainer")
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    assert time.perf_counter() - start < 5
    listed = run_convkit("env", "list")
    assert listed.returncode == 0 and "chainer" in listed.stdout and "ready" in listed.stdout
