import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convkit.errors import InputFileError, ModelLoadError, UnsafeModelError
from convkit.graph.conform import initializers_out_of_inputs
from convkit.graph.model import load_onnx


def _external_model(tmp_path, location):
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_loads_a_valid_model(cnn_case):
    model = load_onnx(cnn_case / "model.onnx")
    assert model.input_names == ["x"] and model.output_names == ["probs"]
    assert model.opset == 17
    assert load_onnx(cnn_case).path.name == "model.onnx"  # a test-case folder works too


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        load_onnx(tmp_path / "nope.onnx")


def test_folder_without_model(tmp_path):
    with pytest.raises(InputFileError, match="without model.onnx"):
        load_onnx(tmp_path)


def test_truncated_model(cnn_case, tmp_path):
    data = (cnn_case / "model.onnx").read_bytes()
    bad = tmp_path / "model.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_onnx(bad)


@pytest.mark.parametrize("payload", [b"", b"hello world, not onnx", bytes(range(256)) * 8])
def test_random_bytes_are_not_a_model(tmp_path, payload):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(payload)
    with pytest.raises(ModelLoadError):
        load_onnx(bad)


def test_checker_failure_is_a_model_error(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ModelLoadError, match="ONNX checker"):
        load_onnx(path)


@pytest.mark.parametrize("location", ["/etc/passwd", "../secret.bin", "sub/../../secret.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    case = tmp_path / "case"
    case.mkdir()
    with pytest.raises(UnsafeModelError, match="outside the model's folder"):
        load_onnx(_external_model(case, location))


def test_external_data_beside_the_model_is_accepted_and_runs(tmp_path):
    from convkit.core.runtime import RuntimeSession, SessionOptions

    np.ones((4, 4), np.float32).tofile(tmp_path / "weights.bin")
    model = load_onnx(_external_model(tmp_path, "weights.bin"))
    assert model.external_files == ["weights.bin"]
    y = RuntimeSession(model, SessionOptions("cpu")).run({"x": np.ones((1, 4), np.float32)})["y"]
    np.testing.assert_allclose(y, np.full((1, 4), 4.0))


def test_missing_external_data_file(tmp_path):
    with pytest.raises(InputFileError, match="weights.bin"):
        load_onnx(_external_model(tmp_path, "weights.bin"))


def test_symlinked_external_data_escaping_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    case = tmp_path / "case"
    case.mkdir()
    (case / "weights.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(UnsafeModelError):
        load_onnx(_external_model(case, "weights.bin"))


def test_old_opset_case_is_copied_intact(old_opset_case, tmp_path):
    shutil.copytree(old_opset_case, tmp_path / "case")
    assert load_onnx(tmp_path / "case").opset == 6


def test_initializers_listed_as_inputs_are_removed_from_the_inputs(cnn_case, tmp_path):
    from convkit.core.runtime import RuntimeSession, SessionOptions

    proto = load_onnx(cnn_case).proto
    for tensor in proto.graph.initializer:
        proto.graph.input.append(
            helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
        )
    onnx.save(proto, tmp_path / "model.onnx")
    model = load_onnx(tmp_path / "model.onnx")
    assert len(model.proto.graph.input) == 9
    notes = initializers_out_of_inputs(model.proto)
    assert notes and "8 initializer(s)" in notes[0]
    onnx.save(model.proto, tmp_path / "model.onnx")
    again = load_onnx(tmp_path / "model.onnx")
    assert [value.name for value in again.proto.graph.input] == ["x"]
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    expected = RuntimeSession(load_onnx(cnn_case), SessionOptions(provider="cpu")).run({"x": x})
    got = RuntimeSession(again, SessionOptions(provider="cpu")).run({"x": x})
    # NOTE: why not bit for bit: with its weights constant, onnxruntime may fold and fuse them differently
    np.testing.assert_allclose(got["probs"], expected["probs"], rtol=1e-5, atol=1e-7)
    assert initializers_out_of_inputs(again.proto) == []
