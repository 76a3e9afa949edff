"""`convkit verify --localize` on a correct onnx-chainer export with BatchNorm reports no divergence:
onnx-chainer writes ``momentum=0.0`` on its BatchNormalization nodes, which onnx's own reference
implementation reads as training mode (the batch's statistics); convkit's oracle must not accuse the
BatchNorm. Real chainer, onnx-chainer and onnxruntime; skipped with the reason when the environment is not
created."""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import ROOT, run_convkit

from convkit.frontends._worker.envs import unavailable_reason

_REASON = unavailable_reason("chainer")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.chainer

SOURCE = f"{ROOT / 'fixtures' / 'models' / 'chainer_models.py'}:bn_branches"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    target = tmp_path_factory.mktemp("chainer_bn") / "model.onnx"
    done = run_convkit(
        "export", SOURCE, "--framework", "chainer", "--input", "x:batch,3,16,16", "-o", str(target)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    batch_norms = [n for n in onnx.load(str(target)).graph.node if n.op_type == "BatchNormalization"]
    assert batch_norms and all(any(a.name == "momentum" for a in n.attribute) for n in batch_norms)
    return target


@pytest.mark.parametrize("oracle", ["reference", "unoptimized"])
def test_localize_on_a_correct_model_with_batchnorm_reports_no_divergence(exported, tmp_path, oracle):
    report = tmp_path / "report.json"
    done = run_convkit(
        "verify", str(exported), "--source", SOURCE, "--framework", "chainer",
        "--localize", oracle, "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(report.read_text())["localization"]
    assert found["first_divergence"] is None and found["disputed"] == [], found
    assert found["checked_values"] == found["values_total"] > 0
    assert "BatchNormalization" not in done.stdout and "first divergence" not in done.stdout
    assert f"no value diverges between onnxruntime and the {found['oracle']}" in done.stdout
    assert f"({found['checked_values']} of {found['values_total']} values compared)" in done.stdout
