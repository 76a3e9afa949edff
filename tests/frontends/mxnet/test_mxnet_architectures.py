"""Real MXNet architectures as users export them: the Gluon model zoo's ResNet-18 v1 and MobileNetV2, and
stacked ``gluon.rnn.LSTM`` layers whose input size differs from their hidden size (which mx.onnx
alone converts wrong), random weights, exported and verified with default options at batch 1 and 3. Real
MXNet, mx.onnx and onnxruntime, no mocks."""

from __future__ import annotations

import onnx
import pytest
from conftest import FIXTURES

from convkit import api
from convkit.core.inputs import parse_input_spec
from convkit.frontends._worker.envs import unavailable_reason

_REASON = unavailable_reason("mxnet")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = [pytest.mark.mxnet, pytest.mark.slow]

MODELS = FIXTURES / "models" / "mxnet_models.py"
IMAGE, SEQUENCE = "x:batch,3,32,32", "x:batch,7,12"


@pytest.mark.parametrize(
    ("factory", "shape", "recurrent"),
    [
        ("resnet18_v1", IMAGE, None),
        ("mobilenet_v2", IMAGE, None),
        ("lstm_2layer", SEQUENCE, ("LSTM", 2)),
        ("lstm_3layer", SEQUENCE, ("LSTM", 3)),
    ],
)
def test_a_real_architecture_exports_and_verifies(factory, shape, recurrent, tmp_path):
    source, target = f"{MODELS}:{factory}", tmp_path / "model.onnx"
    summary = api.export_model(source, target, framework="mxnet", input_specs=[parse_input_spec(shape)])
    assert summary.report.passed
    report = api.verify_model(target, source, framework="mxnet")
    assert report.passed and [c.data_set for c in report.comparisons] == ["batch=1", "batch=3"]
    if recurrent is not None:
        op, layers = recurrent
        assert [node.op_type for node in onnx.load(str(target)).graph.node].count(op) == layers
