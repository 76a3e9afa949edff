"""Keras 3 on its JAX and PyTorch backends, as a user types the commands (real Keras, jax2onnx, torch.onnx
and onnxruntime; no mocks). Each backend runs in a worker process of its own (KERAS_BACKEND)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT, run_convkit, run_convkit_process
from onnx import numpy_helper

from convkit.frontends import get_frontend

pytestmark = pytest.mark.keras_backend

MODELS = ROOT / "fixtures" / "models" / "keras_backend_models.py"
BACKENDS = ["keras-jax", "keras-torch"]


def _skip_unless_available(framework: str) -> None:
    reason = get_frontend(framework).is_available()
    if reason is not None:
        pytest.skip(reason)


def _export(source: str, framework: str, target, *extra: str, run=run_convkit) -> str:
    done = run("export", source, "--framework", framework, *extra, "-o", str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout, done.stdout
    return done.stdout


def _verify(target, source: str, framework: str, report) -> subprocess.CompletedProcess[str]:
    return run_convkit(
        "verify", str(target), "--source", source, "--framework", framework, "--report", str(report)
    )


@pytest.fixture(scope="module", params=BACKENDS)
def exported(request, tmp_path_factory):
    """The reference CNN exported from its factory with a dynamic batch, per backend."""
    framework = request.param
    _skip_unless_available(framework)
    target = tmp_path_factory.mktemp(framework) / "model.onnx"
    # both spellings: --framework keras-jax, and --framework keras --backend torch
    named = ("keras", "--backend", "torch") if framework == "keras-torch" else (framework,)
    # NOTE: why a fresh process: this framework's one end-to-end run of ``python -m convkit``.
    stdout = _export(
        f"{MODELS}:reference_cnn", named[0], target, *named[1:], "--input", "x:batch,28,28,1",
        run=run_convkit_process,
    )  # fmt: skip
    return framework, target, stdout


def test_backend_applies_to_keras_only(tmp_path):
    done = run_convkit(
        "export",
        f"{MODELS}:reference_cnn",
        "--framework",
        "torch",
        "--backend",
        "jax",
        "-o",
        str(tmp_path / "m.onnx"),
    )
    assert done.returncode == 2
    assert "--backend applies to Keras models" in done.stderr and "Traceback" not in done.stderr


def test_export_and_verify_reference_cnn(exported, tmp_path):
    framework, target, _ = exported
    model = onnx.load(str(target))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["x"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in model.graph.output] == ["output"]
    # onnxruntime runs at most 3 spatial dims: the jax2onnx 6-D MaxPool must be gone
    for node in model.graph.node:
        if node.op_type == "MaxPool":
            kernel = next(a for a in node.attribute if a.name == "kernel_shape")
            assert len(kernel.ints) <= 3
    done = _verify(target, f"{MODELS}:reference_cnn", framework, tmp_path / "report.json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is True
    worst = max(float(output["max_abs_diff"]) for output in report["outputs"])
    assert worst < 1e-5


def test_tampered_model_fails_verify(exported, tmp_path):
    framework, target, _ = exported
    model = onnx.load(str(target))
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.dims else 0)
    array = numpy_helper.to_array(biggest).copy()
    array.flat[: array.size // 2] += 0.5
    biggest.CopyFrom(numpy_helper.from_array(array, biggest.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    done = _verify(tampered, f"{MODELS}:reference_cnn", framework, tmp_path / "report.json")
    assert done.returncode == 1, done.stdout + done.stderr


@pytest.mark.parametrize("framework", BACKENDS)
def test_bad_source_is_a_one_line_error(framework, tmp_path):
    _skip_unless_available(framework)
    for source in (f"{ROOT / 'no_such_file.py'}:model", f"{MODELS}:not_a_model"):
        done = run_convkit(
            "export", source, "--framework", framework, "--input", "x:batch,4", "-o", str(tmp_path / "m.onnx")
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        assert len([line for line in done.stderr.splitlines() if line.startswith("error")]) == 1, done.stderr


def test_keras_file_exports_on_torch_with_declared_shapes(tmp_path):
    """A .keras file (saved here on JAX) exported on PyTorch without --input: the shapes it declares."""
    _skip_unless_available("keras-torch")
    saved = tmp_path / "cnn.keras"
    script = (
        "import sys; sys.path.insert(0, sys.argv[2]); import keras_backend_models as m; "
        "m.reference_cnn().save(sys.argv[1])"
    )
    # NOTE: why a fresh interpreter: Keras picks its backend (KERAS_BACKEND) once, when it is first imported.
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(
        [sys.executable, "-c", script, str(saved), str(MODELS.parent)], check=True, env=env, timeout=300
    )
    target = tmp_path / "model.onnx"
    _export(str(saved), "keras-torch", target)
    model = onnx.load(str(target))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    done = _verify(target, str(saved), "keras-torch", tmp_path / "report.json")
    assert done.returncode == 0, done.stdout + done.stderr
