"""Caffe through its own environment, as a user types the commands (real caffe2onnx, OpenCV and onnxruntime;
no mocks). Skipped with the reason when the environment is not created."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from conftest import (
    FIXTURES,
    ROOT,
    TESTCASES,
    assert_matrix_agrees_with_torch,
    assert_verify_fails,
    run_convkit,
    run_convkit_process,
    tampered_copy,
    verify_report,
)
from onnx import numpy_helper

from convkit.frontends._worker.envs import unavailable_reason

_REASON = unavailable_reason("caffe")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.caffe

MODELS = ROOT / "fixtures" / "models" / "caffe_models.py"
NET = FIXTURES / "caffe" / "bn_residual.prototxt"
CAFFEMODEL = NET.with_suffix(".caffemodel")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """bn_residual exported from its prototxt (the caffemodel beside it), the framework inferred."""
    target = tmp_path_factory.mktemp("caffe_net") / "model.onnx"
    # NOTE: why a fresh process: this framework's one end-to-end run of ``python -m convkit``.
    done = run_convkit_process("export", str(NET), "-o", str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with caffe2onnx (opset 13)" in done.stdout and "PASS" in done.stdout
    return target


def test_prototxt_export_and_verify_at_batch_1_and_3(net, tmp_path):
    model = onnx.load(str(net))
    assert model.graph.input[0].name == "data"
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in model.graph.output] == ["output"]
    manifest = json.loads(net.with_suffix(".manifest.json").read_text())
    assert manifest["framework"] == "caffe" and manifest["exporter"] == "caffe2onnx"
    assert manifest["versions"]["caffe2onnx"] == "2.0.1" and manifest["versions"]["opencv"]
    report = verify_report(net, str(NET.parent), report=tmp_path / "report.json")  # the folder holds the pair
    assert report["passed"] and report["reference"].startswith("opencv 4.")
    assert [o["data_set"] for o in report["outputs"]] == ["batch=1", "batch=3"]
    assert [o["shape"] for o in report["outputs"]] == [[1, 10], [3, 10]]
    assert max(o["max_abs_diff"] for o in report["outputs"]) < 1e-5


def test_factory_reference_cnn_export_and_verify(tmp_path):
    target = tmp_path / "model.onnx"
    source = f"{MODELS}:reference_cnn"
    done = run_convkit(
        "export", source, "--framework", "caffe", "--input", "x:batch,1,28,28", "-o", str(target)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = verify_report(target, source, "--framework", "caffe", report=tmp_path / "report.json")
    assert report["passed"] and [o["shape"][0] for o in report["outputs"]] == [1, 3]
    assert max(o["max_abs_diff"] for o in report["outputs"]) < 1e-5
    outputs = tmp_path / "out.npz"
    case = TESTCASES / "reference_cnn" / "test_data_set_1"
    done = run_convkit("run", str(target), "--data", str(case), "-o", str(outputs))
    assert done.returncode == 0, done.stdout + done.stderr
    expected = numpy_helper.to_array(onnx.load_tensor(str(case / "output_0.pb")))
    with np.load(outputs) as found:
        np.testing.assert_allclose(found["output"], expected, atol=1e-5, rtol=0)


def test_tampered_weights_fail_verify(net, tmp_path):
    tampered = tmp_path / "model.onnx"
    tampered_copy(net, "bn1.running_mean", tampered)
    assert_verify_fails(tampered, str(NET))


def _bad_net(folder, case: str):
    """A copy of bn_residual broken one way; returns its prototxt."""
    text, weights = NET.read_text(), CAFFEMODEL.read_bytes()
    if case == "unknown layer":
        text = text.replace('type: "Sigmoid"', 'type: "Swish"')
    elif case == "wrong blob shape":
        text = text.replace("num_output: 4 kernel_size: 1", "num_output: 6 kernel_size: 1")
    elif case == "missing blobs":
        text = text.replace('name: "conv2"', 'name: "conv2b"')
    elif case == "truncated caffemodel":
        weights = weights[: len(weights) // 2]
    elif case == "prototxt syntax":
        text = text.replace("kernel_size: 1 stride: 2", "kernel_size 1 stride: 2")
    prototxt = folder / "net.prototxt"
    prototxt.write_text(text)
    prototxt.with_suffix(".caffemodel").write_bytes(weights)
    return prototxt


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "unknown layer",
            "net.prototxt line 33: layer 'sig' has type 'Swish', which caffe2onnx cannot convert",
        ),
        (
            "wrong blob shape",
            "blob 0 of layer 'proj' (Convolution) is [4, 8, 1, 1], the prototxt makes it [6, 8",
        ),
        ("missing blobs", "net.caffemodel has no weights for layer 'conv2b' (Convolution)"),
        ("truncated caffemodel", "net.caffemodel is truncated or not a caffemodel"),
        ("prototxt syntax", "net.prototxt does not parse at line 31, column"),
    ],
)
def test_bad_nets_are_one_line_with_exit_2(tmp_path, case, message):
    target = tmp_path / "out" / "model.onnx"
    done = run_convkit("export", str(_bad_net(tmp_path, case)), "-o", str(target))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert all(line.startswith(("error: ", "hint: ")) for line in lines)
    assert "Traceback" not in done.stderr
    assert not target.exists()


def test_train_says_caffe_cannot(tmp_path):
    done = run_convkit("train", "--framework", "caffe", "--epochs", "1", "-o", str(tmp_path / "w.npz"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        "the caffe front end cannot train the reference CNN: Caffe itself cannot be installed" in done.stderr
    )
    assert "Traceback" not in done.stderr and not (tmp_path / "w.npz").exists()


def test_matrix_with_torch_agrees(tmp_path):
    assert_matrix_agrees_with_torch("caffe", "caffe2onnx", tmp_path)


def test_env_create_again_is_up_to_date_quickly():
    start = time.perf_counter()
    done = run_convkit("env", "create", "caffe")
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    assert time.perf_counter() - start < 5
