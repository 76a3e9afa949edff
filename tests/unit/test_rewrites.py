"""Rewrites keep the model's function: onnxruntime gives identical outputs before and after."""

import numpy as np
import onnx

from convkit.core.runtime import RuntimeSession, SessionOptions
from convkit.graph.model import load_onnx
from convkit.graph.rewrites import flatten_channels_last, pool_before_activation


def _run(proto, x, folder):
    folder.mkdir()
    onnx.save(proto, folder / "model.onnx")
    return RuntimeSession(load_onnx(folder / "model.onnx"), SessionOptions(provider="cpu")).run({"x": x})


def test_pool_moves_ahead_of_the_activation_without_changing_outputs(cnn_case, tmp_path):
    original = load_onnx(cnn_case).proto
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    assert pool_before_activation(rewritten) == ["pool1", "pool2"]
    onnx.checker.check_model(rewritten, full_check=True)
    order = [node.name for node in rewritten.graph.node]
    assert order.index("pool1") < order.index("relu1") and order.index("pool2") < order.index("relu2")
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    before, after = _run(original, x, tmp_path / "before"), _run(rewritten, x, tmp_path / "after")
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


def test_only_activations_of_the_named_producers_move(cnn_case):
    rewritten = load_onnx(cnn_case).proto
    assert pool_before_activation(rewritten, {"conv2"}) == ["pool2"]
    assert pool_before_activation(rewritten, {"nothing"}) == []


def test_flatten_reads_channels_last_without_changing_outputs(cnn_case, tmp_path):
    original = load_onnx(cnn_case).proto
    rewritten = onnx.shape_inference.infer_shapes(original)
    assert flatten_channels_last(rewritten) == ["fc1"]
    onnx.checker.check_model(rewritten, full_check=True)
    transpose = next(node for node in rewritten.graph.node if node.op_type == "Transpose")
    assert list(transpose.input) == ["p2"] and list(transpose.attribute[0].ints) == [0, 2, 3, 1]
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    before, after = _run(original, x, tmp_path / "before"), _run(rewritten, x, tmp_path / "after")
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-6)


def test_flatten_without_known_shapes_is_left_alone(cnn_case):
    assert flatten_channels_last(load_onnx(cnn_case).proto) == []


def test_both_rewrites_compose(cnn_case):
    proto = onnx.shape_inference.infer_shapes(load_onnx(cnn_case).proto)
    assert pool_before_activation(proto, {"conv1"}) == ["pool1"]
    assert flatten_channels_last(proto) == ["fc1"]  # the shapes after conv2 are still known
