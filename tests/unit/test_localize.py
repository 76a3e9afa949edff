"""Plant faults in a model and prove localization names the node, and reduce writes a failing repro."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convkit.api import verify_testcase
from convkit.diagnose.localize import localize
from convkit.diagnose.reduce import NothingToReduceError, reduce_model
from convkit.errors import ConvkitError
from convkit.graph.model import load_onnx

X = {"x": np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)}


def _save(proto, folder):
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, folder / "model.onnx")
    return load_onnx(folder / "model.onnx")


def _change_bias(proto, name="conv2.bias"):
    for tensor in proto.graph.initializer:
        if tensor.name == name:
            value = numpy_helper.to_array(tensor).copy()
            value[3] += 0.5
            tensor.CopyFrom(numpy_helper.from_array(value, name))


def _relu_to_leaky(proto, node_name="relu3"):
    for node in proto.graph.node:
        if node.name == node_name:
            node.op_type = "LeakyRelu"
            node.attribute.append(helper.make_attribute("alpha", 0.3))


@pytest.fixture
def original(cnn_case):
    return load_onnx(cnn_case)


@pytest.mark.parametrize(
    ("plant", "node", "op"), [(_change_bias, "conv2", "Conv"), (_relu_to_leaky, "relu3", "LeakyRelu")]
)
def test_planted_fault_is_named_against_the_original(original, tmp_path, plant, node, op):
    proto = onnx.load(original.path)
    plant(proto)
    faulty = _save(proto, tmp_path / "faulty")
    for chunk in (64, 2):  # bounded-memory chunks find the same node
        found = localize(faulty, X, original, chunk=chunk)
        assert found.first is not None
        assert (found.first.node, found.first.op_type) == (node, op)
        assert found.first.inputs_max_abs_diff <= 1e-6  # the inputs agree (two sessions: not bit for bit)
        assert found.first.comparison.max_abs_diff > 1e-3


def test_flipped_transpose_is_named(tmp_path):
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="pre"),
        helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 1], name="swap"),
        helper.make_node("MatMul", ["t", "w"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 4])],
        [w],
    )
    good = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "good")
    proto = onnx.load(good.path)
    proto.graph.node[1].attribute[0].CopyFrom(helper.make_attribute("perm", [0, 1, 2]))
    bad = _save(proto, tmp_path / "bad")
    x = {"x": np.random.default_rng(1).standard_normal((2, 4, 4)).astype(np.float32)}
    found = localize(bad, x, good)
    assert (found.first.node, found.first.op_type) == ("swap", "Transpose")


def test_healthy_model_agrees_with_the_reference_implementation(original):
    for oracle in ("reference", "unoptimized"):
        found = localize(original, X, oracle)
        assert found.first is None
        assert found.checked_values == 11


def test_reduce_writes_a_small_repro_that_still_fails(original, tmp_path):
    proto = onnx.load(original.path)
    _change_bias(proto)
    faulty = _save(proto, tmp_path / "faulty")
    repro = reduce_model(faulty, X, tmp_path / "repro", original)
    assert repro.nodes == 1
    assert sorted(p.name for p in (tmp_path / "repro").iterdir()) == ["model.onnx", "test_data_set_0"]
    report = verify_testcase(tmp_path / "repro")
    assert not report.passed
    assert report.worst.min_passing_atol == pytest.approx(0.5, abs=1e-3)


def test_reduce_with_nothing_wrong_is_a_clear_error(original, tmp_path):
    with pytest.raises(NothingToReduceError):
        reduce_model(original, X, tmp_path / "repro")
    assert not (tmp_path / "repro").exists()


def test_unrelated_reference_model_is_refused(original, old_opset_case):
    with pytest.raises(ConvkitError, match="share no value names"):
        localize(original, X, load_onnx(old_opset_case))


def test_node_source_reads_the_torch_exporters_scopes_and_stack():
    from convkit.diagnose.localize import node_source

    node = helper.make_node("Conv", ["x", "w"], ["y"], name="node_conv2d_1")
    helper.set_metadata_props(
        node,
        {
            "pkg.torch.onnx.name_scopes": "['', 'encoder', 'conv2', 'conv2d']",
            "pkg.torch.onnx.stack_trace": 'File "/src/models/net.py", line 36, in forward\n    x = conv2(x)',
        },
    )
    assert node_source(node) == "encoder.conv2 (net.py:36)"
    functional = helper.make_node("Relu", ["y"], ["z"])
    helper.set_metadata_props(functional, {"pkg.torch.onnx.name_scopes": "['', 'relu']"})
    assert node_source(functional) == "relu"
    assert node_source(helper.make_node("Relu", ["y"], ["z"])) is None


def _conv_bn_relu(tmp_path, momentum):
    """Conv -> BatchNormalization (opset 13, with ``momentum`` as mx.onnx and onnx-chainer write it) -> Relu,
    with running statistics away from the identity."""
    rng = np.random.default_rng(2)
    weights = {
        "w": rng.standard_normal((4, 3, 3, 3)),
        "scale": rng.uniform(0.5, 1.5, 4),
        "b": rng.uniform(-0.2, 0.2, 4),
        "mean": rng.uniform(-0.5, 0.5, 4),
        "var": rng.uniform(0.5, 2.0, 4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c", "scale", "b", "mean", "var"], ["n"], name="bn", momentum=momentum
        ),
        helper.make_node("Relu", ["n"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path)


BN_X = {"x": np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_batchnorm_with_momentum_is_not_accused(tmp_path, momentum):
    """onnx's own reference normalizes with the batch's statistics when ``momentum`` is set; convkit's oracle
    runs inference as onnxruntime and the frameworks do, so a correct model localizes to nothing."""
    from onnx.reference import ReferenceEvaluator

    from convkit.diagnose.localize import onnxruntime_evaluator

    model = _conv_bn_relu(tmp_path, momentum)
    stock = ReferenceEvaluator(model.proto).run(["n"], BN_X)[0]
    runtime = onnxruntime_evaluator(model.proto)(["n"], BN_X)[0]
    assert np.abs(stock - runtime).max() > 0.1  # the oracle bug this guards against is real
    found = localize(model, BN_X, "reference")
    assert found.first is None and found.disputed == [], found.describe()
    assert (found.checked_values, found.values_total) == (3, 3)
    assert "3 of 3 values compared" in found.describe()


def test_the_cross_check_sides_with_the_right_execution(tmp_path):
    """A node alone in unoptimized onnxruntime disputes an oracle value that is off, and confirms one that
    is right while onnxruntime is off."""
    from convkit.diagnose.oracles import cross_check_node

    model = _conv_bn_relu(tmp_path, 0.9)
    feeds = {"c": np.random.default_rng(4).standard_normal((2, 4, 8, 8)).astype(np.float32)}
    expected = _bn_inference(model.proto, feeds["c"])
    disputed = cross_check_node(model.proto, 1, "reference", feeds, expected + 1.0, expected, None)
    assert disputed.verdict == "disputed" and disputed.by == "unoptimized onnxruntime"
    confirmed = cross_check_node(model.proto, 1, "reference", feeds, expected, expected + 1.0, None)
    assert confirmed.verdict == "confirmed"


def _bn_inference(proto, c):
    w = {t.name: numpy_helper.to_array(t).reshape(-1, 1, 1) for t in proto.graph.initializer if t.name != "w"}
    return ((c - w["mean"]) / np.sqrt(w["var"] + 1e-5) * w["scale"] + w["b"]).astype(np.float32)


def test_a_divergence_names_its_node_and_says_how_far_the_comparison_went(original, tmp_path):
    proto = onnx.load(original.path)
    _relu_to_leaky(proto)
    faulty = _save(proto, tmp_path / "faulty")
    found = localize(faulty, X, original, chunk=2)
    data = found.to_dict()
    assert data["first_divergence"]["node"] == "relu3"
    assert data["checked_values"] < data["values_total"] == 11
    assert f"{data['checked_values']} of {data['values_total']} values compared" in found.describe()
    assert data["cross_check"] is None and data["disputed"] == []
