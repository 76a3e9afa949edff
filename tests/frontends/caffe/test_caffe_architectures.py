"""Real Caffe architectures as users convert them: the BVLC LeNet, AlexNet (LRN, grouped convolutions,
Dropout) and SqueezeNet (fire modules, global pooling) deploy nets with random weights, each exported and
verified with default options from prototxts that declare batch 1, 10 and 64
(``scripts/make_caffe_fixtures.py`` writes them). Real caffe2onnx, OpenCV and onnxruntime, no mocks."""

from __future__ import annotations

import onnx
import pytest
from conftest import FIXTURES

from convkit import api
from convkit.frontends import LoadOptions
from convkit.frontends._worker.envs import unavailable_reason

_REASON = unavailable_reason("caffe")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = [pytest.mark.caffe, pytest.mark.slow]

NETS = ("lenet", "alexnet", "squeezenet")
DECLARED = (1, 10, 64)


@pytest.mark.parametrize("declared", DECLARED)
@pytest.mark.parametrize("net", NETS)
def test_a_deploy_prototxt_exports_and_verifies_whatever_batch_it_declares(net, declared, tmp_path):
    prototxt = str(FIXTURES / "caffe" / "real" / f"{net}_batch{declared}.prototxt")
    options = LoadOptions(weights=str(FIXTURES / "caffe" / "real" / f"{net}.caffemodel"))
    target = tmp_path / "model.onnx"
    summary = api.export_model(prototxt, target, load_options=options)
    assert summary.report.passed and summary.framework == "caffe"
    # NOTE: why check the declared input: the exported model takes any batch, not the prototxt's.
    (value,) = onnx.load(str(target)).graph.input
    assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    report = api.verify_model(target, prototxt, load_options=options)
    assert report.passed and [c.data_set for c in report.comparisons] == ["batch=1", "batch=3"]
