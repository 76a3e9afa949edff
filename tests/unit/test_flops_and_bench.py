import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convkit.graph.flops import count_flops
from convkit.graph.model import load_onnx
from convkit.perf.bench import bench_model, interleave, spread_warning, summarize
from convkit.perf.peak import nominal_peak_gflops


def test_reference_cnn_flops_match_the_founding_document(cnn_case):
    # 5.26 MFLOP per sample: conv1 0.39 + conv2 4.46 + fc1 0.41 + fc2 0.003 (2 FLOPs per multiply-add)
    model = load_onnx(cnn_case).proto
    flops, unknown = count_flops(model, {"x": (1, 1, 28, 28)})
    assert flops == 2 * (26 * 26 * 32 * 9 + 11 * 11 * 64 * 288 + 1600 * 128 + 128 * 10)
    assert unknown == []
    assert count_flops(model, {"x": (8, 1, 28, 28)})[0] == 8 * flops


def test_grouped_conv_and_matmul_flops():
    w = numpy_helper.from_array(np.zeros((8, 2, 3, 3), np.float32), "w")  # groups=4 over 8 channels
    m = numpy_helper.from_array(np.zeros((8 * 6 * 6, 5), np.float32), "m")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], group=4),
            helper.make_node("Reshape", ["c", "shape"], ["r"]),
            helper.make_node("MatMul", ["r", "m"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, m, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    flops, unknown = count_flops(model, {"x": (1, 8, 8, 8)})
    assert unknown == []
    assert flops == 2 * (8 * 6 * 6 * 2 * 9) + 2 * (5 * 288)


def test_einsum_and_batched_matmul_flops_as_attention_computes_them():
    # (batch 2, heads 4, seq 16, head 8): scores = q k^T by Einsum, then scores @ v by a batched MatMul
    q, k, v = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 4, 16, 8]) for n in "qkv")
    graph = helper.make_graph(
        [
            helper.make_node("Einsum", ["q", "k"], ["s"], equation="bhqd,bhkd->bhqk"),
            helper.make_node("Softmax", ["s"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["y"]),
        ],
        "attention",
        [q, k, v],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    flops, unknown = count_flops(model, {name: (2, 4, 16, 8) for name in "qkv"})
    assert unknown == []
    assert flops == 2 * (2 * 4 * 16 * 16 * 8) * 2  # q k^T and p v, each 2*4*16*16*8 multiply-adds


def test_interleave_times_every_runner_alike():
    calls = {"a": 0, "b": 0}

    def runner(name):
        def run():
            calls[name] += 1

        return run

    times = interleave(
        {"a": runner("a"), "b": runner("b")}, warmup=2, min_calls=10, min_seconds=0.0, block_seconds=0.0
    )
    # one timed call per block, one untimed call at each switch, two warm-up calls
    assert len(times["a"]) == len(times["b"]) >= 10
    assert calls["a"] == calls["b"] == 2 * len(times["a"]) + 2


def test_interleave_blocks_last_about_block_seconds():
    times = interleave(
        {"a": lambda: None, "b": lambda: None}, min_calls=1, min_seconds=0.0, block_seconds=0.01
    )
    assert len(times["a"]) > 10 and len(times["b"]) > 10


def test_nominal_peak_is_derived_from_the_cpu():
    peak, description = nominal_peak_gflops(cpus=1)
    if peak is not None:
        assert peak > 1.0 and "GHz" in description


def test_bench_model_reports_every_batch_size(cnn_case):
    report = bench_model(str(cnn_case / "model.onnx"), (1, 4), min_seconds=0.05)
    assert {(t.contender, t.batch) for t in report.timings} == {
        ("convkit (onnxruntime)", 1),
        ("onnxruntime defaults", 1),
        ("convkit (onnxruntime)", 4),
        ("onnxruntime defaults", 4),
    }
    for t in report.timings:
        assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms
        assert t.gflops is not None and t.gflops > 0
    assert report.flops_per_sample == 5_262_080
    assert report.ratio(4, "convkit (onnxruntime)", "onnxruntime defaults") > 0
    assert onnx.load(cnn_case / "model.onnx")  # the model is untouched


def test_a_wide_spread_is_warned_about_and_a_steady_one_is_not():
    steady = summarize("convkit (onnxruntime)", 1, [0.001] * 90 + [0.0011] * 10, 0, None)
    assert steady.p99_ms == pytest.approx(1.1) and spread_warning(steady) is None
    noisy = summarize("torch eager", 64, [0.001] * 80 + [0.003] * 20, 0, None)
    assert noisy.p90_ms == pytest.approx(3.0)
    assert spread_warning(noisy).startswith("torch eager at batch 64: p90 is 3.0x the median")
