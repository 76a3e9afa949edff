"""Real Hugging Face architectures through the user's workflow: tiny random-weight models built from configs
(``fixtures/models/hf_models.py``, nothing downloaded), exported from example data at one shape with no
``--input``, then verified against PyTorch at that shape and at another batch and sequence (or image, or
audio) size. The dims the model allows must come out dynamic without being spelled; the ones it fixes must
stay static, and the export must say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import run_convkit
from records import max_abs_diff, record, verified

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("transformers")

import onnx

pytestmark = [pytest.mark.slow, pytest.mark.torch]

SOURCE = "fixtures/models/hf_models.py"
VOCAB = 96  # hf_models.VOCAB


@dataclass
class Shape:
    """One data shape: the batch, the token sequence (decoder: half of it), the image side(s), the samples."""

    batch: int
    seq: int = 16
    image: tuple[int, int] = (32, 32)
    samples: int = 800
    text: str = ""


@dataclass
class Case:
    factory: str
    architecture: str
    family: str
    inputs: dict[str, str]  # name -> kind: tokens, mask, decoder_tokens, image, audio
    dims: dict[str, list[int | str]]  # the ONNX inputs' dims expected
    first_output: list[int | str]  # the first ONNX output's dims expected
    at_export: Shape
    second: Shape
    note: str | None = None  # a text the export must print (a dim the model fixes)


TOKENS = Shape(2, 16, text="batch 2, seq 16")
TOKENS_2 = Shape(3, 9, text="batch 3, seq 9")
CASES = [
    Case(
        "distilbert", "DistilBERT (transformers)", "encoder",
        {"input_ids": "tokens", "attention_mask": "mask"},
        {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]},
        ["batch", "seq", 32], TOKENS, TOKENS_2,
    ),
    Case(
        "llama", "LLaMA (transformers)", "decoder: causal mask, rotary embeddings, grouped-query attention",
        {"input_ids": "tokens", "attention_mask": "mask"},
        {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]},
        ["batch", "seq", VOCAB], TOKENS, TOKENS_2,
    ),
    Case(
        "qwen2", "Qwen2 (transformers)", "decoder: rotary embeddings, attention biases",
        {"input_ids": "tokens"}, {"input_ids": ["batch", "seq"]},
        ["batch", "seq", VOCAB], TOKENS, TOKENS_2,
    ),
    Case(
        "gpt2", "GPT-2 (transformers)", "decoder: learned positions",
        {"input_ids": "tokens"}, {"input_ids": ["batch", "seq"]},
        ["batch", "seq", 32], TOKENS, TOKENS_2,
    ),
    Case(
        "t5", "T5 (transformers)", "encoder-decoder",
        {"input_ids": "tokens", "decoder_input_ids": "decoder_tokens"},
        {"input_ids": ["batch", "seq"], "decoder_input_ids": ["batch", "decoder_input_ids_seq"]},
        ["batch", "decoder_input_ids_seq", 32],
        Shape(2, 16, text="batch 2, seq 16, decoder seq 8"),
        Shape(3, 9, text="batch 3, seq 9, decoder seq 4"),
    ),
    Case(
        "vit", "ViT (transformers)", "vision transformer",
        {"pixel_values": "image"}, {"pixel_values": ["batch", 3, 32, 32]},
        ["batch", 17, 32],
        Shape(2, text="batch 2, 32x32"), Shape(3, text="batch 3, 32x32 (the model fixes the image size)"),
        note="kept static: pixel_values axes 1, 2, 3 (3, 32, 32): the model fixes them",
    ),
    Case(
        "resnet", "ResNet (transformers)", "convnet",
        {"pixel_values": "image"}, {"pixel_values": ["batch", 3, "pixel_values_dim2", "pixel_values_dim3"]},
        ["batch", 32, "(((pixel_values_dim2 - 1)//8)) + 1", "(((pixel_values_dim3 - 1)//8)) + 1"],
        Shape(2, text="batch 2, 32x32"), Shape(3, image=(48, 40), text="batch 3, 48x40"),
        note="kept static: pixel_values axis 1 (3): the model fixes it",
    ),
    Case(
        "wav2vec2", "Wav2Vec2 (transformers)", "audio encoder",
        {"input_values": "audio"}, {"input_values": ["batch", "input_values_dim1"]},
        ["batch", "((input_values_dim1//20)) - 1", 32],
        Shape(2, text="batch 2, 800 samples"), Shape(3, samples=1200, text="batch 3, 1200 samples"),
    ),
]  # fmt: skip


def write_data(path: Path, case: Case, shape: Shape, seed: int) -> str:
    """Example inputs of ``case`` at ``shape``: token ids below the vocabulary, a padding mask with the first
    row's last three positions masked, standard-normal images and audio."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for name, kind in case.inputs.items():
        if kind == "tokens":
            arrays[name] = rng.integers(0, VOCAB, (shape.batch, shape.seq)).astype(np.int64)
        elif kind == "decoder_tokens":
            arrays[name] = rng.integers(0, VOCAB, (shape.batch, shape.seq // 2)).astype(np.int64)
        elif kind == "mask":
            mask = np.ones((shape.batch, shape.seq), np.int64)
            mask[0, -3:] = 0
            arrays[name] = mask
        elif kind == "image":
            arrays[name] = rng.standard_normal((shape.batch, 3, *shape.image)).astype(np.float32)
        else:
            arrays[name] = rng.standard_normal((shape.batch, shape.samples)).astype(np.float32)
    np.savez(path, **arrays)
    return str(path)


def onnx_dims(model: Path, which: str) -> dict[str, list[int | str]]:
    graph = onnx.load(str(model), load_external_data=False).graph
    return {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in getattr(graph, which)
    }


@pytest.mark.parametrize("case", CASES, ids=[case.factory for case in CASES])
def test_exports_from_example_data_and_holds_parity_at_another_size(case: Case, tmp_path: Path) -> None:
    source = f"{SOURCE}:{case.factory}"
    model = tmp_path / f"{case.factory}.onnx"
    first = write_data(tmp_path / "a.npz", case, case.at_export, 0)
    exported = run_convkit("export", source, "--data", first, "-o", str(model))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "with dynamo" in exported.stdout  # the torch.export-based exporter, no fallback
    assert onnx_dims(model, "input") == case.dims
    assert next(iter(onnx_dims(model, "output").values())) == case.first_output
    if case.note is not None:
        assert case.note in exported.stdout
    else:
        assert "kept static" not in exported.stdout

    r1 = verified(model, source, first, tmp_path / "r1.json")
    second = write_data(tmp_path / "b.npz", case, case.second, 1)
    r2 = verified(model, source, second, tmp_path / "r2.json")
    shapes = {c["shape"][0] for c in r2["outputs"]}
    assert shapes == {case.second.batch}
    record(
        "torch",
        case.architecture,
        case.family,
        case.at_export.text,
        case.second.text,
        max_abs_diff(r1),
        max_abs_diff(r2),
    )
