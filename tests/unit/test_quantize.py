import numpy as np
import pytest

from convkit.errors import DataError
from convkit.graph.model import load_onnx
from convkit.quantize import float32_chains, quantize_model, shallow_convs


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.random((64, 1, 28, 28), dtype=np.float32))
    np.savez(folder / "eval.npz", x=rng.random((64, 1, 28, 28), dtype=np.float32))
    return folder


def test_static_int8_keeps_top1_and_is_written_as_qdq(cnn_case, calibration, tmp_path):
    out = tmp_path / "int8.onnx"
    report = quantize_model(cnn_case, out, "static", calibration / "calib.npz", calibration / "eval.npz")
    assert report.written and report.passed
    assert report.top1_agreement >= 0.95
    assert report.quantized_bytes < report.fp32_bytes / 3
    ops = {node.op_type for node in load_onnx(out).proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert report.fp32_ms > 0 and report.quantized_ms > 0
    assert report.to_dict()["speedup"] == pytest.approx(report.fp32_ms / report.quantized_ms)


def test_shallow_conv_and_its_activation_and_pooling_stay_float32(cnn_case, calibration, tmp_path):
    # conv1 reduces over 1 channel x 3x3 = 9 values, conv2 over 32 x 3x3 = 288
    proto = load_onnx(cnn_case).proto
    assert shallow_convs(proto) == ["conv1"]
    assert float32_chains(proto, ["conv1"]) == ["conv1", "relu1", "pool1"]
    out = tmp_path / "int8.onnx"
    report = quantize_model(cnn_case, out, "static", calibration / "calib.npz", time_seconds=0)
    graph = load_onnx(out).proto.graph
    first_conv = next(node for node in graph.node if node.name == "conv1")
    assert first_conv.input[0] == "x" and first_conv.input[1] == "conv1.weight"  # float input and weight
    assert report.fp32_ms is None and any("conv1, pool1, relu1" in note for note in report.notes)


def test_model_failing_the_bar_is_not_written_unless_forced(cnn_case, calibration, tmp_path):
    out = tmp_path / "int8.onnx"
    report = quantize_model(cnn_case, out, "dynamic", None, calibration / "eval.npz", "off", min_top1=1.01)
    assert not report.passed and not report.written
    assert not out.exists()
    forced = quantize_model(cnn_case, out, "dynamic", None, calibration / "eval.npz", "off", 1.01, force=True)
    assert forced.written and out.exists()
    assert any("--force" in note for note in forced.notes)


def test_fp16_keeps_float32_io(cnn_case, calibration, tmp_path):
    out = tmp_path / "fp16.onnx"
    report = quantize_model(cnn_case, out, "fp16", None, calibration / "eval.npz")
    assert report.written and report.top1_agreement == 1.0
    assert report.max_abs_diff < 1e-2
    model = load_onnx(out)
    assert model.proto.graph.input[0].type.tensor_type.elem_type == 1  # float32 in, converted inside


def test_static_without_calibration_is_a_clear_error(cnn_case, tmp_path):
    with pytest.raises(DataError, match="calibration"):
        quantize_model(cnn_case, tmp_path / "q.onnx", "static")
