"""Apache MXNet through its own environment, as a user types the commands (real MXNet, mx.onnx and
onnxruntime; no mocks). Skipped with the reason when the environment is not created."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import numpy as np
import onnx
import pytest
from conftest import ROOT, assert_verify_fails, run_convkit, run_convkit_process, tampered_copy, verify_report

from convkit.frontends._worker.envs import env_python, unavailable_reason

_REASON = unavailable_reason("mxnet")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.mxnet

MODELS = ROOT / "fixtures" / "models" / "mxnet_models.py"
BROKEN = ROOT / "tests" / "frontends" / "mxnet" / "broken_models.py"


def _export(source: str, spec: str, target, *extra: str, run=run_convkit) -> None:
    done = run("export", source, "--framework", "mxnet", "--input", spec, "-o", str(target), *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with mx.onnx (opset 13)" in done.stdout and "PASS" in done.stdout
    assert done.stderr.strip() == ""  # MXNet's warnings stay in the quiet worker


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The reference CNN exported from its factory, with a dynamic batch."""
    target = tmp_path_factory.mktemp("mxnet_cnn") / "model.onnx"
    # NOTE: why a fresh process: this framework's one end-to-end run of ``python -m convkit``.
    _export(f"{MODELS}:reference_cnn", "x:batch,1,28,28", target, run=run_convkit_process)
    return target


@pytest.mark.parametrize(
    ("factory", "spec"), [("reference_cnn", "x:batch,1,28,28"), ("residual_bn", "x:batch,3,16,16")]
)
def test_export_and_verify_at_batch_1_and_3(cnn, tmp_path, factory, spec):
    target = cnn if factory == "reference_cnn" else tmp_path / "model.onnx"
    if factory != "reference_cnn":
        _export(f"{MODELS}:{factory}", spec, target)
    model = onnx.load(str(target))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in model.graph.output] == ["output"]
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    manifest = json.loads(target.with_suffix(".manifest.json").read_text())
    assert manifest["framework"] == "mxnet" and manifest["exporter"] == "mx.onnx"
    assert manifest["versions"]["mxnet"] == "1.9.1"
    report = verify_report(
        target, f"{MODELS}:{factory}", "--framework", "mxnet", report=tmp_path / "report.json"
    )
    assert report["passed"] and report["reference"].startswith("mxnet 1.9")
    assert [o["data_set"] for o in report["outputs"]] == ["batch=1", "batch=3"]
    assert [o["shape"][0] for o in report["outputs"]] == [1, 3]
    assert max(o["max_abs_diff"] for o in report["outputs"]) < 1e-5


def test_weights_become_named_initializers_and_tampering_fails_verify(cnn, tmp_path):
    tampered = tmp_path / "model.onnx"
    names = tampered_copy(cnn, "fc2.bias", tampered)
    assert {"conv1.weight", "fc1.weight", "fc2.bias"} <= names  # the block's parameter paths
    assert_verify_fails(tampered, f"{MODELS}:reference_cnn", "--framework", "mxnet")


def test_matrix_row_passes_and_its_model_is_tidy(tmp_path):
    """``convkit matrix`` builds the reference CNN from canonical weights in the worker (a saved symbol model)
    and exports it."""
    # NOTE: why not beside torch: the API test holds this model to the framework-free test case within 1e-5,
    # which is what agreeing with every other framework means, and torch's export costs seconds.
    report = tmp_path / "matrix.json"
    done = run_convkit(
        "matrix", "--frameworks", "mxnet", "--out-dir", str(tmp_path / "m"), "--json", str(report)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(report.read_text())["frameworks"]
    assert row["framework"] == "mxnet" and row["status"] == "pass" and row["exporter"] == "mx.onnx"
    assert row["max_abs_diff"] < 1e-5
    (path,) = (tmp_path / "m").rglob("*.onnx")
    model = onnx.load(str(path))
    assert model.producer_name == "mx.onnx" and model.ir_version == 7
    assert [i.name for i in model.graph.input] == ["x"]  # the weights are initializers, no graph inputs
    assert {"conv1.weight", "fc2.bias"} <= {t.name for t in model.graph.initializer}


def test_train_two_epochs_writes_canonical_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVKIT_PROGRESS", "lines")  # the epochs as progress lines
    weights = tmp_path / "w.npz"
    done = run_convkit("train", "--framework", "mxnet", "--epochs", "2", "-o", str(weights))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mxnet: 2 epochs" in done.stdout
    accuracy = float(done.stdout.split("test accuracy ")[1].split(";")[0])
    assert accuracy > 0.9
    assert "val_accuracy" in done.stderr  # the worker's epochs reached the progress lines
    with np.load(weights) as archive:
        assert archive["fc1.weight"].shape == (128, 1600) and archive["fc2.weight"].shape == (10, 128)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``residual_bn`` saved the Gluon way, by ``HybridBlock.export`` (input ``data``): a folder holding
    ``residual-symbol.json`` and ``residual-0000.params``; and in ``legacy/`` beside it, an MLP saved the
    Module-API way (``mx.model.save_checkpoint``, epoch 3), its head a ``SoftmaxOutput`` with its label."""
    folder = tmp_path_factory.mktemp("mxnet_saved")
    script = ROOT / "tests" / "frontends" / "mxnet" / "saved_models.py"
    subprocess.run([str(env_python("mxnet")), str(script), str(folder)], check=True, capture_output=True)
    return folder


def test_a_folder_saved_by_hybridblock_export_exports_and_verifies(saved, tmp_path):
    target = tmp_path / "model.onnx"
    done = run_convkit("export", str(saved), "--input", "data:batch,3,16,16", "-o", str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exported mxnet model" in done.stdout  # the framework inferred from the files
    report = verify_report(
        target, str(saved / "residual-symbol.json"), "--framework", "mxnet", report=tmp_path / "report.json"
    )
    assert report["passed"] and [o["data_set"] for o in report["outputs"]] == ["batch=1", "batch=3"]


def test_a_module_api_checkpoint_with_its_training_head_exports(saved, tmp_path):
    """``SoftmaxOutput`` takes a label that inference never reads (and that trips mx.onnx 1.9.1 itself)."""
    target = tmp_path / "model.onnx"
    done = run_convkit("export", str(saved / "legacy"), "--input", "data:batch,6", "-o", str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
    model = onnx.load(str(target))
    assert [i.name for i in model.graph.input] == ["data"]  # no label input
    assert "Softmax" in {node.op_type for node in model.graph.node}


def _spoiled(saved, folder, *, params: bool = True, symbol: str | None = None) -> str:
    """A copy of the ``saved`` folder without its parameters, or with another symbol file."""
    shutil.copytree(saved, folder)
    if not params:
        (folder / "residual-0000.params").unlink()
    if symbol is not None:
        (folder / "residual-symbol.json").write_text(symbol)
    return str(folder)


@pytest.mark.parametrize(
    ("source", "extra", "message"),
    [
        (f"{BROKEN}:raises", (), "RuntimeError: the factory broke on purpose"),
        (f"{BROKEN}:plain_block", (), "made a Doubler (a gluon.Block, which MXNet cannot trace)"),
        (f"{BROKEN}:untranslatable", (), "mx.onnx cannot convert the MXNet operator erf to ONNX"),
        (
            f"{BROKEN}:unseeded",
            ("--opset", "17"),
            "mx.onnx converts MXNet models to ONNX opset 12 or 13 only",
        ),
        (f"{MODELS}:two_inputs", (), "the model's inputs are a, b, not x"),
        ("no-params", (), "residual-symbol.json has no parameters beside it"),
        ("corrupt", (), "cannot read the MXNet symbol file"),
    ],
)
def test_bad_input_is_one_line_with_exit_2(saved, tmp_path, source, extra, message):
    if source == "no-params":
        source = _spoiled(saved, tmp_path / "saved", params=False)
    elif source == "corrupt":
        source = _spoiled(saved, tmp_path / "saved", symbol='{"nodes": [garbage')
    target = tmp_path / "model.onnx"
    done = run_convkit(
        "export", source, "--framework", "mxnet", "--input", "x:batch,4", "-o", str(target), *extra
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0], lines
    assert all(line.startswith(("error: ", "hint: ")) for line in lines)
    assert "Traceback" not in done.stderr
    assert not target.exists()


def test_verbose_shows_the_conversion_log(tmp_path):
    source = f"{MODELS}:two_inputs"
    loud = run_convkit(
        "export",
        source,
        "-f",
        "mxnet",
        "--input",
        "a:batch,8",
        "--input",
        "b:batch,8",
        "-o",
        str(tmp_path / "v.onnx"),
        "--verbose",
    )
    assert loud.returncode == 0, loud.stderr
    assert "[mx.onnx] Converting idx" in loud.stderr  # mx.onnx's own log, node by node


def test_env_create_again_is_up_to_date_quickly():
    start = time.perf_counter()
    done = run_convkit("env", "create", "mxnet")
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    assert time.perf_counter() - start < 5
    listed = run_convkit("env", "list")
    assert listed.returncode == 0 and "mxnet" in listed.stdout and "ready" in listed.stdout
