"""Real Chainer architectures as users export them: the CIFAR example's VGG with BatchNormalization, a ResNet
of ``L.ResNet50Layers``' own bottleneck blocks, and two stacked ``L.GRU`` stepped over a sequence, random
weights, exported and verified with default options at batch 1 and 3. Real Chainer, onnx-chainer and
onnxruntime, no mocks."""

from __future__ import annotations

import pytest
from conftest import FIXTURES

from convkit import api
from convkit.core.inputs import parse_input_spec
from convkit.frontends._worker.envs import unavailable_reason

_REASON = unavailable_reason("chainer")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = [pytest.mark.chainer, pytest.mark.slow]

MODELS = FIXTURES / "models" / "chainer_models.py"


@pytest.mark.parametrize(
    ("factory", "shape"),
    [("vgg_bn", "x:batch,3,32,32"), ("small_resnet", "x:batch,3,32,32"), ("gru_2layer", "x:batch,7,12")],
)
def test_a_real_architecture_exports_and_verifies(factory, shape, tmp_path):
    source, target = f"{MODELS}:{factory}", tmp_path / "model.onnx"
    summary = api.export_model(source, target, framework="chainer", input_specs=[parse_input_spec(shape)])
    assert summary.report.passed
    report = api.verify_model(target, source, framework="chainer")
    assert report.passed and [c.data_set for c in report.comparisons] == ["batch=1", "batch=3"]
