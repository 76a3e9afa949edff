"""`convkit verify --localize` on a correct mx.onnx or onnx-chainer export with BatchNorm reports no
divergence: mx.onnx writes ``momentum=0.9`` and onnx-chainer ``momentum=0.0`` on their BatchNormalization
nodes, which onnx's own reference implementation reads as training mode (the batch's statistics); convkit's
oracle must not accuse the BatchNorm. Real mxnet/chainer, their exporters and onnxruntime; each framework's
cases skip with the reason when its environment is not created."""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import ROOT, run_convkit

from convkit.frontends._worker.envs import unavailable_reason

MODELS = ROOT / "fixtures" / "models"
CASES = {
    "mxnet": f"{MODELS / 'mxnet_models.py'}:residual_bn",
    "chainer": f"{MODELS / 'chainer_models.py'}:bn_branches",
}


@pytest.fixture(
    scope="module", params=[pytest.param(name, marks=getattr(pytest.mark, name)) for name in CASES]
)
def exported(request, tmp_path_factory):
    framework = request.param
    reason = unavailable_reason(framework)
    if reason is not None:
        pytest.skip(reason)
    target = tmp_path_factory.mktemp(f"{framework}_bn") / "model.onnx"
    done = run_convkit(
        "export", CASES[framework], "--framework", framework, "--input", "x:batch,3,16,16", "-o", str(target)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    batch_norms = [n for n in onnx.load(str(target)).graph.node if n.op_type == "BatchNormalization"]
    assert batch_norms and all(any(a.name == "momentum" for a in n.attribute) for n in batch_norms)
    return framework, target


@pytest.mark.parametrize("oracle", ["reference", "unoptimized"])
def test_localize_on_a_correct_model_with_batchnorm_reports_no_divergence(exported, tmp_path, oracle):
    framework, model = exported
    report = tmp_path / "report.json"
    done = run_convkit(
        "verify", str(model), "--source", CASES[framework], "--framework", framework,
        "--localize", oracle, "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(report.read_text())["localization"]
    assert found["first_divergence"] is None and found["disputed"] == [], found
    assert found["checked_values"] == found["values_total"] > 0
    assert "BatchNormalization" not in done.stdout and "first divergence" not in done.stdout
    assert f"no value diverges between onnxruntime and the {found['oracle']}" in done.stdout
    assert f"({found['checked_values']} of {found['values_total']} values compared)" in done.stdout
