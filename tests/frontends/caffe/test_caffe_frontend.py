"""The Caffe front end through its API: the reference CNN against the framework-free test case, prototxt +
caffemodel sources, and the checks that stop bad nets before caffe2onnx or OpenCV see them. Real caffe2onnx,
OpenCV and onnxruntime, no mocks."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime
import pytest
from conftest import CANONICAL_WEIGHTS, FIXTURES, ROOT, TESTCASES

from convkit import api
from convkit.core.artifacts import list_test_data_sets, read_test_data_set
from convkit.errors import ConvkitError, InputFileError
from convkit.frontends import ExportOptions, LoadOptions, resolve_source
from convkit.frontends._worker.envs import unavailable_reason
from convkit.frontends.caffe import CaffeFrontend, caffe_files
from convkit.graph.model import load_onnx
from convkit.reference.cnn import load_weights

_REASON = unavailable_reason("caffe")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.caffe

NET = FIXTURES / "caffe" / "bn_residual.prototxt"
CASE = TESTCASES / "reference_cnn"


@pytest.fixture(scope="module")
def frontend():
    return CaffeFrontend()


@pytest.fixture(scope="module")
def reference(frontend):
    """The reference CNN with the canonical weights, written by the worker as prototxt + caffemodel."""
    return frontend.reference_cnn(load_weights())


def _case():
    model = load_onnx(CASE / "model.onnx")
    for folder in list_test_data_sets(CASE):
        inputs, expected = read_test_data_set(folder, model.input_names, model.output_names)
        yield inputs, next(iter(expected.values()))


def test_reference_cnn_matches_the_stored_test_case(frontend, reference):
    for inputs, expected in _case():
        (probs,) = frontend.run(reference, inputs)  # OpenCV running the Caffe net
        np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)


def test_reference_cnn_export_matches_the_stored_test_case(reference, tmp_path):
    target = tmp_path / "model.onnx"
    prototxt = reference.spec["prototxt"]
    options = LoadOptions(weights=reference.spec["caffemodel"])
    summary = api.export_model(prototxt, target, load_options=options)
    assert summary.report.passed and summary.framework == "caffe"
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    for inputs, expected in _case():
        (probs,) = session.run(None, inputs)
        np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)


def test_a_prototxt_is_recognized_and_declares_its_inputs(tmp_path):
    chosen, preloaded = resolve_source(str(NET), None)  # no --framework: the suffix says Caffe
    assert chosen.name == "caffe" and preloaded is None
    handle = chosen.load(str(NET), LoadOptions())
    assert handle.spec["caffemodel"].endswith("bn_residual.caffemodel")  # found beside the prototxt
    assert chosen.input_names(handle) == ["data"]
    (spec,) = chosen.input_specs(handle)
    assert (spec.name, spec.dims, spec.dtype) == ("data", ["batch", 3, 16, 16], "float32")


def test_caffe_files_finds_the_pair_from_either_file_or_the_folder(tmp_path):
    caffemodel = NET.with_suffix(".caffemodel")
    assert caffe_files(NET) == (NET, caffemodel)
    assert caffe_files(caffemodel) == (NET, caffemodel)
    assert caffe_files(NET.parent) == (NET, caffemodel)
    lonely = tmp_path / "net.prototxt"
    shutil.copy(NET, lonely)
    assert caffe_files(lonely) == (lonely, None)
    assert caffe_files(tmp_path / "weights.npz") is None
    assert not CaffeFrontend().claims_path(CANONICAL_WEIGHTS)


def test_missing_weights_are_caught_before_the_worker_starts(frontend, tmp_path):
    lonely = tmp_path / "net.prototxt"
    shutil.copy(NET, lonely)
    with pytest.raises(InputFileError, match="no net.caffemodel beside it"):
        frontend.load(str(lonely), LoadOptions())
    with pytest.raises(InputFileError, match="is not a .caffemodel"):
        frontend.load(str(NET), LoadOptions(weights=str(CANONICAL_WEIGHTS)))


def test_export_names_weights_after_their_layers_at_opset_13(tmp_path):
    target = tmp_path / "model.onnx"
    summary = api.export_model(str(NET), target)
    assert summary.report.passed
    model = onnx.load(str(target))
    assert model.opset_import[0].version == 13 and model.producer_name == "caffe2onnx"
    names = {t.name for t in model.graph.initializer}
    assert {"conv1.weight", "bn1.running_mean", "bn1.running_var", "scale1.weight", "fc.bias"} <= names
    assert "Dropout" not in {node.op_type for node in model.graph.node}
    assert model.graph.input[0].name == "data"


def test_a_bad_net_is_one_error_naming_the_layer(frontend, tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(NET.read_text().replace('"Sigmoid"', '"Swish"'))
    shutil.copy(NET.with_suffix(".caffemodel"), net.with_suffix(".caffemodel"))
    handle = frontend.load(str(net), LoadOptions())
    with pytest.raises(ConvkitError, match=r"net.prototxt line \d+: layer 'sig' has type 'Swish'"):
        frontend.input_names(handle)


def test_the_opset_below_13_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConvkitError, match="need opset 13"):
        api.export_model(str(NET), tmp_path / "model.onnx", export_options=ExportOptions(opset=11))
    assert not (tmp_path / "model.onnx").exists()


def test_factories_load_through_the_worker(frontend):
    source = f"{ROOT / 'fixtures' / 'models' / 'caffe_models.py'}:bn_residual"
    handle = frontend.load(source, LoadOptions())
    (probs,) = frontend.run(handle, {"data": np.ones((2, 3, 16, 16), np.float32)})
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("not_a_net", "made a dict, not a Caffe net"),
        ("text_without_weights", "returned a prototxt without weights"),
    ],
)
def test_a_factory_that_makes_no_net_is_one_error(frontend, factory, message):
    handle = frontend.load(
        f"{ROOT / 'tests' / 'frontends' / 'caffe' / 'broken_models.py'}:{factory}", LoadOptions()
    )
    with pytest.raises(ConvkitError, match=message):
        frontend.run(handle, {"x": np.ones((1, 4), np.float32)})
