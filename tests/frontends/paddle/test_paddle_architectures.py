"""Real Paddle architectures as users export them: ``paddle.vision.models``' ResNet-18 and MobileNetV2, a
``nn.TransformerEncoder`` and a 2-layer ``nn.LSTM``, random weights, exported and verified with default
options at batch 1 and 3. Real Paddle, paddle2onnx and onnxruntime, no mocks."""

from __future__ import annotations

import pytest
from conftest import FIXTURES

from convkit import api
from convkit.core.inputs import parse_input_spec
from convkit.frontends._worker.envs import unavailable_reason

_REASON = unavailable_reason("paddle")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = [pytest.mark.paddle, pytest.mark.slow]

MODELS = FIXTURES / "models" / "paddle_models.py"


@pytest.mark.parametrize(
    ("factory", "shape"),
    [
        ("resnet18", "x:batch,3,32,32"),
        ("mobilenet_v2", "x:batch,3,32,32"),
        ("transformer_encoder", "x:batch,6,8"),
        ("lstm_2layer", "x:batch,7,12"),
    ],
)
def test_a_real_architecture_exports_and_verifies(factory, shape, tmp_path):
    source, target = f"{MODELS}:{factory}", tmp_path / "model.onnx"
    summary = api.export_model(source, target, framework="paddle", input_specs=[parse_input_spec(shape)])
    assert summary.report.passed
    report = api.verify_model(target, source, framework="paddle")
    assert report.passed and [c.data_set for c in report.comparisons] == ["batch=1", "batch=3"]
