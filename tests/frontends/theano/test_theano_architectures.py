"""Real PyTensor (Theano) architectures as users wrote them: an MLP with batch normalization and erf-GELU,
LeNet-5, and an Elman RNN written with ``pytensor.scan`` (converted to an ONNX ``Scan``), random weights,
exported and verified with default options at batch 1 and 3; other ``scan`` forms, and the one ONNX ``Scan``
cannot express refused by name. Real PyTensor, convkit's converter and onnxruntime, no mocks."""

from __future__ import annotations

import onnx
import pytest
from conftest import FIXTURES, ROOT, run_convkit

from convkit import api
from convkit.core.inputs import parse_input_spec
from convkit.frontends._worker.envs import unavailable_reason

_REASON = unavailable_reason("theano")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = [pytest.mark.theano, pytest.mark.slow]

MODELS = FIXTURES / "models" / "theano_models.py"
SCANS = ROOT / "tests" / "frontends" / "theano" / "scan_models.py"


@pytest.mark.parametrize(
    ("source", "shape", "scans"),
    [
        (f"{MODELS}:mlp_bn_gelu", "x:batch,20", 0),
        (f"{MODELS}:lenet5", "x:batch,1,32,32", 0),
        (f"{MODELS}:elman_rnn", "x:batch,6,8", 1),
        (f"{SCANS}:two_scans", "x:batch,5,4", 2),
    ],
)
def test_a_real_architecture_exports_and_verifies(source, shape, scans, tmp_path):
    target = tmp_path / "model.onnx"
    summary = api.export_model(source, target, framework="theano", input_specs=[parse_input_spec(shape)])
    assert summary.report.passed
    report = api.verify_model(target, source, framework="theano")
    assert report.passed and [c.data_set for c in report.comparisons] == ["batch=1", "batch=3"]
    assert [node.op_type for node in onnx.load(str(target)).graph.node].count("Scan") == scans


def test_a_scan_onnx_cannot_express_is_refused_by_name_at_the_users_line(tmp_path):
    target = tmp_path / "model.onnx"
    done = run_convkit("export", f"{SCANS}:until", "-f", "theano", "--input", "x:batch,4", "-o", str(target))
    assert done.returncode == 2, done.stdout + done.stderr
    (first,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert "cannot express this PyTensor Scan in ONNX: it stops on a condition (until=...)" in first
    assert "scan_models.py:" in first and "AllocEmpty" not in first
    assert "Traceback" not in done.stderr and not target.exists()
