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


# A small GPT-2 (4 blocks, width 128, 8000 tokens, random weights): int8 on every weighted node moves its
# next-token logits enough to flip about 2 % of the top-1 predictions; the lm_head, tied to the embedding,
# moves them most.
TINY_GPT2 = {"n_layer": 4, "n_embd": 128, "n_head": 2, "vocab_size": 8000, "n_positions": 32}
TOKENS = 16


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from convkit import api
    from convkit.core.inputs import parse_input_spec
    from convkit.frontends import get_frontend

    torch.manual_seed(0)
    config = transformers.GPT2Config(**TINY_GPT2, use_cache=False)
    lm = transformers.GPT2LMHeadModel(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):
            return self.lm(input_ids=input_ids, use_cache=False).logits

    folder = tmp_path_factory.mktemp("gpt2")
    vocab = TINY_GPT2["vocab_size"]
    api.export_native(
        get_frontend("torch"),
        Logits().eval(),
        specs=[parse_input_spec(f"input_ids:batch,{TOKENS}:int64")],
        example={"input_ids": np.random.default_rng(0).integers(0, vocab, (2, TOKENS))},
        output=folder / "gpt2.onnx",
        source="tiny_gpt2",
    )
    np.savez(folder / "eval.npz", input_ids=np.random.default_rng(1).integers(0, vocab, (32, TOKENS)))
    return folder


def _head(proto):
    """The node that writes the logits: GPT-2's lm_head MatMul."""
    return next(node for node in proto.graph.node if node.output[0] == proto.graph.output[0].name)


def test_int8_everywhere_loses_top1_on_a_transformer_and_the_search_keeps_the_head_float32(
    tiny_gpt2, tmp_path
):
    model, held_out, out = tiny_gpt2 / "gpt2.onnx", tiny_gpt2 / "eval.npz", tmp_path / "int8.onnx"
    plain = quantize_model(model, out, "dynamic", None, held_out, "on", time_seconds=0, search_float32=False)
    assert not plain.passed and not plain.written and plain.top1_agreement < 0.99

    report = quantize_model(model, out, "dynamic", None, held_out, "on", time_seconds=0)
    assert report.passed and report.written and report.top1_agreement >= 0.99
    [note] = [note for note in report.notes if "weighted node(s) in float32" in note]
    head = _head(load_onnx(model).proto).name
    kept = note.split("): ")[-1].split(", ")
    assert kept[0] == head  # the most sensitive, named first
    graph = load_onnx(out).proto.graph
    ops = {node.name: node.op_type for node in graph.node}
    assert ops[head] == "MatMul"  # float32, reading the embedding it is tied to
    int8 = [node for node in graph.node if node.op_type == "MatMulInteger"]
    assert int8 and len(int8) <= 17 - len(kept)
    assert report.quantized_bytes < report.fp32_bytes  # no float32 copy of the tied weight was left behind

    # the bar holds when checked here, independently of the gate
    import onnxruntime as ort

    tokens = np.load(held_out)["input_ids"]
    runs = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (model, out)]
    agree = [
        (
            runs[0].run(None, {"input_ids": part})[0].argmax(-1)
            == runs[1].run(None, {"input_ids": part})[0].argmax(-1)
        )
        for part in (tokens[:16], tokens[16:])
    ]
    assert np.mean(agree) == pytest.approx(report.top1_agreement) and np.mean(agree) >= 0.99


def test_the_emulated_int8_matches_onnxruntimes_node_by_node(tiny_gpt2, tmp_path):
    import onnx
    import onnxruntime as ort

    from convkit.quantize.dynamic import prepare_dynamic, quantize_dynamic_int8
    from convkit.quantize.sensitive import Emulator, quantizer_names, weighted_nodes

    prepared = prepare_dynamic(tiny_gpt2 / "gpt2.onnx", tmp_path)
    assert prepared.tied == [_head(prepared.proto).name]  # the tied head now reads a folded weight
    names = weighted_nodes(prepared.proto)
    assert len(names) == 4 * 4 + 1  # four per block and the head
    feeds = {"input_ids": np.load(tiny_gpt2 / "eval.npz")["input_ids"][:4]}
    scores = Emulator(onnx.load(str(prepared.folded)), names, True, tmp_path).sensitivities(feeds)
    assert max(scores, key=scores.__getitem__) == _head(prepared.proto).name
    fp32 = ort.InferenceSession(str(prepared.original), providers=["CPUExecutionProvider"]).run(None, feeds)[
        0
    ]
    for name in (names[0], names[-1]):
        others = [n for n in names if n != name]
        quantize_dynamic_int8(
            prepared.folded, tmp_path / "one.onnx", True, others + quantizer_names(prepared.proto, others)
        )
        int8 = ort.InferenceSession(str(tmp_path / "one.onnx"), providers=["CPUExecutionProvider"]).run(
            None, feeds
        )[0]
        error = np.linalg.norm(int8 - fp32) / np.linalg.norm(fp32)
        assert error > 0 and scores[name] == pytest.approx(error, rel=0.05)


def test_the_search_bisects_on_how_many_stay_float32():
    from convkit.quantize.sensitive import fewest_float32

    ranked = [f"n{i}" for i in range(20)]
    asked = []

    def passes(kept):
        asked.append(len(kept))
        return len(kept) >= 7

    assert fewest_float32(ranked, passes) == 7
    assert len(asked) <= 5 and 0 not in asked and 20 not in asked
    assert fewest_float32(ranked, lambda kept: False) is None
    assert fewest_float32(ranked, lambda kept: len(kept) >= 7, low=9) == 10  # the fewest above low
