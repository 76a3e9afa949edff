"""The Theano (PyTensor) front end through its API: the reference CNN against the framework-free test case,
graphs with two inputs and outputs, weights, and the worker's errors. Real PyTensor and onnxruntime, no
mocks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, TESTCASES

from convkit import api
from convkit.core.artifacts import list_test_data_sets, read_test_data_set
from convkit.core.inputs import parse_input_spec
from convkit.errors import DataError, ExportError, InputFileError, ModelLoadError
from convkit.frontends import LoadOptions, get_frontend, resolve_source
from convkit.frontends._worker.envs import unavailable_reason
from convkit.frontends.theano import TheanoFrontend
from convkit.graph.model import load_onnx
from convkit.reference.cnn import load_weights

_REASON = unavailable_reason("theano")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.theano

MODELS = FIXTURES / "models" / "theano_models.py"
BROKEN = ROOT / "tests" / "frontends" / "theano" / "broken_models.py"
OPS = ROOT / "tests" / "frontends" / "theano" / "op_models.py"


@pytest.fixture(scope="module")
def frontend():
    return TheanoFrontend()


def test_reference_cnn_matches_the_stored_test_case(frontend):
    reference = frontend.reference_cnn(load_weights())
    assert frontend.input_names(reference) == ["x"]
    (spec,) = frontend.input_specs(reference)
    assert (spec.name, spec.dims, spec.dtype) == ("x", ["batch", 1, 28, 28], "float32")
    case = TESTCASES / "reference_cnn"
    model = load_onnx(case / "model.onnx")
    folders = list_test_data_sets(case)
    assert len(folders) == 2
    for folder in folders:
        inputs, expected = read_test_data_set(folder, model.input_names, model.output_names)
        (probs,) = frontend.run(reference, inputs)
        np.testing.assert_allclose(probs, next(iter(expected.values())), atol=1e-5, rtol=0)


def test_the_alias_declared_inputs_and_no_file_sources():
    assert get_frontend("pytensor").name == "theano"
    chosen, preloaded = resolve_source(f"{MODELS}:conv_two_heads", "pytensor")
    assert chosen.name == "theano" and preloaded is None  # the factory is imported in the worker only
    handle = chosen.load(f"{MODELS}:conv_two_heads", LoadOptions())
    declared = [(s.name, s.dims, s.dtype) for s in chosen.input_specs(handle)]  # so --input may be left out
    assert declared == [("image", ["batch", 2, 10, 10], "float32"), ("features", ["batch", 5], "float32")]
    with pytest.raises(InputFileError, match="not a PyTensor model source"):
        chosen.load(str(MODELS), LoadOptions())


def test_two_inputs_two_outputs_in_graph_order(tmp_path):
    target = tmp_path / "model.onnx"
    source = f"{MODELS}:conv_two_heads"
    specs = [parse_input_spec("features:batch,5"), parse_input_spec("image:batch,2,10,10")]
    summary = api.export_model(source, target, framework="theano", input_specs=specs)
    assert summary.report.passed and summary.export.exporter == "convkit-pytensor"
    model = load_onnx(target)
    assert model.input_names == ["image", "features"] and model.output_names == ["output_0", "output_1"]
    names = {t.name for t in model.proto.graph.initializer}
    assert {"conv.kernel", "conv.bias", "side.weight", "head.weight", "head.bias"} <= names
    ops = {node.op_type for node in model.proto.graph.node}
    assert {"Tanh", "Sigmoid", "Softmax", "ReduceSum", "Exp", "Log"} <= ops


def test_many_rules_at_once_match_pytensor(tmp_path):
    """Elementwise math, integer division and modulo on negative numbers, switches, strided and reversed
    slices, gathers, reductions, argmax, softmax over two axes and a full convolution, each an output."""
    specs = [parse_input_spec("x:batch,6,5:float32:-2..2"), parse_input_spec("k:batch,4:int64:-20..20")]
    summary = api.export_model(
        f"{OPS}:op_zoo", tmp_path / "model.onnx", framework="theano", input_specs=specs
    )
    assert summary.report.passed and len(summary.report.comparisons) == 9
    assert max(c.max_abs_diff for c in summary.report.comparisons) < 1e-5
    ops = {node.op_type for node in load_onnx(tmp_path / "model.onnx").proto.graph.node}
    assert {"Mod", "Floor", "Where", "Gather", "ArgMax", "LogSoftmax", "ReduceProd", "Erf", "Pad"} <= ops


def test_weights_load_by_shared_variable_name(frontend, tmp_path):
    """--weights replaces the factory's values: a zero last layer makes the output softmax(fc2.bias)."""
    weights = load_weights()
    weights["fc2.weight"] = np.zeros_like(weights["fc2.weight"])
    weights["fc2.bias"] = np.arange(10, dtype=np.float32) / 4
    np.savez(tmp_path / "w.npz", **weights)
    handle = frontend.load(f"{MODELS}:reference_cnn", LoadOptions(weights=str(tmp_path / "w.npz")))
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    (probs,) = frontend.run(handle, {"x": x})
    bias = weights["fc2.bias"]
    want = np.exp(bias) / np.exp(bias).sum()
    np.testing.assert_allclose(probs, np.stack([want, want]), atol=1e-6)


def test_worker_errors_map_to_convkit_errors(frontend, tmp_path):
    with pytest.raises(ModelLoadError, match="returned a dict with keys weights, not a PyTensor model"):
        frontend.run(
            frontend.load(f"{BROKEN}:not_a_graph", LoadOptions()), {"x": np.zeros((1, 4), np.float32)}
        )
    with pytest.raises(ExportError, match=r"no rule for the PyTensor op SortOp.*broken_models.py:\d+"):
        api.export_model(
            f"{BROKEN}:sorts",
            tmp_path / "m.onnx",
            framework="theano",
            input_specs=[parse_input_spec("x:batch,4")],
        )
    assert not (tmp_path / "m.onnx").exists()
    mlp = frontend.load(f"{BROKEN}:unseeded", LoadOptions())
    with pytest.raises(DataError, match="the model's inputs are input, not x"):
        frontend.run(mlp, {"x": np.zeros((1, 4), np.float32)})
    with pytest.raises(DataError, match="input input is float32 with 2 dims in the model, float64"):
        frontend.run(mlp, {"input": np.zeros((1, 4))})


def test_one_handle_is_one_model_even_when_the_factory_is_unseeded(frontend, tmp_path):
    """The reference run and the export happen in two worker processes; both must see the same weights."""
    source = f"{BROKEN}:unseeded"
    summary = api.export_model(
        source, tmp_path / "model.onnx", framework="theano", input_specs=[parse_input_spec("input:batch,4")]
    )
    assert summary.report.passed
    handle = frontend.load(source, LoadOptions())
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    first = frontend.run(handle, {"input": x})[0]
    again = frontend.run(handle, {"input": x[:2]})[0]
    # NOTE: why not bit for bit: batch 3 and batch 2 may take other kernels (1.9e-9 seen under load);
    # another seed would differ by far more
    np.testing.assert_allclose(first[:2], again, rtol=1e-5, atol=1e-6)
