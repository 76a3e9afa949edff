"""Weights in and out of model files without holding them in memory: ``graph.external`` writes external data
back into one file, streaming; ``graph.light`` (``load_onnx(weights=False)``) reads a file leaving its large
weights on disk. Both must give the very same model as onnx's own load."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from convkit.errors import ModelLoadError
from convkit.graph.external import external_bytes, inline_external_data
from convkit.graph.light import LIGHT_MIN_BYTES
from convkit.graph.model import load_onnx

ROWS, COLS = 640, 512  # 1.25 MiB of float32: above LIGHT_MIN_BYTES


def _model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """MatMul by a large weight, Add a small bias, Mul by a Constant node's tensor, in a Loop-free graph."""
    rng = np.random.default_rng(0)
    values = {
        "W": rng.standard_normal((ROWS, COLS)).astype(np.float32),
        "W2": rng.standard_normal((COLS, COLS)).astype(np.float32),
        "b": rng.standard_normal(COLS).astype(np.float32),
    }
    scale = numpy_helper.from_array(rng.standard_normal((COLS, COLS)).astype(np.float32), "scale")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["h2"]),
            helper.make_node("Constant", [], ["s"], value=scale),
            helper.make_node("MatMul", ["h2", "s"], ["h3"]),
            helper.make_node("MatMul", ["h3", "W2"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", ROWS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", COLS])],
        [numpy_helper.from_array(v, k) for k, v in values.items()],
    )
    values["s"] = numpy_helper.to_array(scale)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), values


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _initializers(proto, base_dir=""):
    return {t.name: numpy_helper.to_array(t, base_dir=str(base_dir)) for t in proto.graph.initializer}


def test_light_load_leaves_large_weights_in_the_file(tmp_path):
    model, values = _model()
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    light = load_onnx(path, weights=False)
    tensors = {t.name: t for t in light.proto.graph.initializer}
    assert tensors["W"].data_location == TensorProto.EXTERNAL and not tensors["W"].raw_data
    assert tensors["W2"].data_location == TensorProto.EXTERNAL and values["W2"].nbytes >= LIGHT_MIN_BYTES
    assert tensors["b"].data_location == TensorProto.DEFAULT  # small: read as usual
    # only the Constant node's tensor (1 MiB, a node attribute) is read; W and W2 (2.25 MiB) are not
    assert light.proto.ByteSize() < values["s"].nbytes + 2**16
    assert light.external_files == ["model.onnx"]
    assert light.input_names == ["x"] and light.output_names == ["y"]
    read = _initializers(light.proto, tmp_path)
    assert set(read) == {"W", "W2", "b"}
    for name, array in read.items():
        np.testing.assert_array_equal(array, values[name])
    # onnx's own loader follows the references to the same bytes
    onnx.load_external_data_for_model(light.proto, str(tmp_path))
    assert light.proto.graph.initializer[0].raw_data == onnx.load(str(path)).graph.initializer[0].raw_data


def test_light_load_of_a_model_without_large_weights_is_the_full_load(tmp_path, cnn_case):
    light, full = load_onnx(cnn_case / "model.onnx", weights=False), load_onnx(cnn_case / "model.onnx")
    assert light.proto == full.proto and light.external_files == []


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_light_load_of_a_truncated_file_says_it_is_truncated(tmp_path, cut):
    model, _ = _model()
    data = model.SerializeToString()
    path = tmp_path / "model.onnx"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_onnx(path, weights=False)


def test_light_load_reads_a_model_with_a_weight_of_the_wrong_size_in_full(tmp_path):
    """raw_data that does not match the dims is not skipped: the model is read whole, as onnx reads it."""
    model, _ = _model()
    weight = model.graph.initializer[0]
    weight.raw_data = weight.raw_data[:-4]
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    light = load_onnx(path, weights=False, check=False)
    assert light.proto == onnx.load(str(path)) and light.external_files == []


def test_light_load_keeps_the_checker(tmp_path):
    model, _ = _model()
    model.graph.node[0].input[1] = "missing"
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="fails the ONNX checker"):
        load_onnx(path, weights=False)


@pytest.mark.parametrize("constants_too", [False, True])
def test_inline_external_data_gives_back_the_same_model(tmp_path, constants_too):
    model, values = _model()
    inline = tmp_path / "inline" / "model.onnx"
    inline.parent.mkdir()
    onnx.save(model, str(inline))
    path = tmp_path / "model.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=1024,
        convert_attribute=constants_too,  # a Constant node's tensor external too: the slow path
    )
    before = onnx.load(str(path), load_external_data=False)
    assert external_bytes(before) == sum(v.nbytes for k, v in values.items() if k != "s")
    inline_external_data(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inline", "model.onnx"]  # the data file is gone
    merged = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(merged)
    assert all(t.data_location == TensorProto.DEFAULT for t in merged.graph.initializer)
    for name, array in _initializers(merged).items():
        np.testing.assert_array_equal(array, values[name])
    assert numpy_helper.to_array(merged.graph.node[2].attribute[0].t).tobytes() == values["s"].tobytes()
    x = np.random.default_rng(1).standard_normal((3, ROWS)).astype(np.float32)
    np.testing.assert_array_equal(_run(path, x), _run(inline, x))


def test_inline_refuses_short_external_data(tmp_path):
    model, _ = _model()
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="w.data", size_threshold=1024)
    data = tmp_path / "w.data"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(OSError, match="bytes short"):
        inline_external_data(path)
    assert (tmp_path / "model.onnx").is_file() and data.is_file()  # nothing lost
    assert not list(tmp_path.glob("*.inline"))  # nothing half-written left


def test_a_session_on_a_light_model_reads_the_weights_from_the_file(tmp_path):
    from convkit.core.runtime import RuntimeSession

    model, _ = _model()
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    light, full = load_onnx(path, weights=False), load_onnx(path)
    assert light.light and not full.light
    x = np.random.default_rng(2).standard_normal((3, ROWS)).astype(np.float32)
    expected = RuntimeSession(full).run({"x": x})["y"]
    np.testing.assert_allclose(RuntimeSession(light).run({"x": x})["y"], expected, rtol=1e-6, atol=1e-6)
    assert np.abs(expected).max() > 1  # the weights were read: a session on zeros would give zeros
