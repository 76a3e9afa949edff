"""Which dims ``convkit export --data`` leaves dynamic for a PyTorch model: the batch, and every other dim the
model allows (torch.export decides), named readably in the inputs, outputs and value infos alike;
``--static`` fixes them all, ``--input`` is taken as written, and a model that fails to build or to run is
the user's error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_convkit

from convkit.core.inputs import (
    InputSpec,
    kept_static_note,
    make_static,
    resolve_dynamic_dims,
    settle_dynamic_dims,
    specs_from_arrays,
)

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

import onnx

pytestmark = pytest.mark.torch

MODELS = "fixtures/models/torch_models.py"


def npz(path: Path, seed: int = 0, **shapes: tuple[tuple[int, ...], str]) -> str:
    """Write ``name=(shape, dtype)`` arrays (token ids below 50, floats standard normal) to ``path``."""
    rng = np.random.default_rng(seed)
    arrays = {
        name: rng.integers(0, 50, shape).astype(dtype)
        if np.dtype(dtype).kind == "i"
        else rng.standard_normal(shape).astype(dtype)
        for name, (shape, dtype) in shapes.items()
    }
    np.savez(path, **arrays)
    return str(path)


def dims(model: Path, which: str = "input") -> dict[str, list[int | str]]:
    """The graph inputs' (or outputs') dims by name: sizes, or symbols."""
    graph = onnx.load(str(model), load_external_data=False).graph
    return {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in getattr(graph, which)
    }


def verify(model: Path, source: str, data: str, report: Path) -> dict:
    done = run_convkit("verify", str(model), "--source", source, "--data", data, "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(report.read_text())


def test_the_sequence_of_token_data_is_dynamic_in_the_inputs_and_in_the_outputs(tmp_path):
    source = f"{MODELS}:token_lstm"
    model = tmp_path / "lstm.onnx"
    data = npz(tmp_path / "a.npz", tokens=((2, 5), "int64"))
    done = run_convkit("export", source, "--data", data, "-o", str(model))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "inputs: tokens:batch,seq:int64" in done.stdout
    assert dims(model) == {"tokens": ["batch", "seq"]}
    # the exporter declared the LSTM's output [batch, 5, 5]: the sequence must not stay pinned there
    assert dims(model, "output") == {"output": ["batch", "seq", 5]}
    value_infos = dims(model, "value_info")
    assert not [name for name, shape in value_infos.items() if shape[:2] == ["batch", 5]], value_infos
    manifest = json.loads((tmp_path / "lstm.manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == ["batch", "seq"]
    assert manifest["outputs"][0]["shape"] == ["batch", "seq", 5]

    other = npz(tmp_path / "b.npz", 1, tokens=((3, 9), "int64"))
    report = verify(model, source, other, tmp_path / "r.json")
    assert report["passed"] and report["outputs"][0]["shape"] == [3, 9, 5]


def test_data_of_one_sample_still_exports_a_dynamic_batch(tmp_path):
    source = f"{MODELS}:token_lstm"
    model = tmp_path / "one.onnx"
    done = run_convkit(
        "export", source, "--data", npz(tmp_path / "a.npz", tokens=((1, 6), "int64")), "-o", str(model)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert dims(model) == {"tokens": ["batch", "seq"]}
    verify(model, source, npz(tmp_path / "b.npz", 1, tokens=((3, 4), "int64")), tmp_path / "r.json")


def test_static_keeps_every_dim_of_the_data_and_input_is_taken_as_written(tmp_path):
    source = f"{MODELS}:token_lstm"
    data = npz(tmp_path / "a.npz", tokens=((2, 5), "int64"))
    fixed = tmp_path / "fixed.onnx"
    done = run_convkit("export", source, "--data", data, "--static", "-o", str(fixed))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "inputs: tokens:2,5:int64" in done.stdout
    assert dims(fixed) == {"tokens": [2, 5]}
    other = npz(tmp_path / "b.npz", 1, tokens=((3, 9), "int64"))
    refused = run_convkit("verify", str(fixed), "--source", source, "--data", other)
    assert refused.returncode == 2 and "dimension 0 must be 2" in refused.stderr

    written = tmp_path / "written.onnx"
    spec = "tokens:batch,5:int64:0..50"
    done = run_convkit("export", source, "--input", spec, "--data", data, "--static", "-o", str(written))
    assert done.returncode == 0, done.stdout + done.stderr
    assert dims(written) == {"tokens": ["batch", 5]}


def test_dims_the_model_fixes_stay_static_and_the_export_says_which_and_why(tmp_path):
    conv = tmp_path / "conv.onnx"
    source = f"{MODELS}:conv_bn_net"
    done = run_convkit(
        "export", source, "--data", npz(tmp_path / "a.npz", x=((2, 3, 16, 16), "float32")), "-o", str(conv)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert dims(conv) == {"x": ["batch", 3, "x_dim2", "x_dim3"]}
    assert "note: kept static: x axis 1 (3): the model fixes it" in done.stdout
    verify(conv, source, npz(tmp_path / "b.npz", 1, x=((3, 3, 24, 20), "float32")), tmp_path / "r.json")

    cnn = tmp_path / "cnn.onnx"
    data = npz(tmp_path / "c.npz", x=((2, 1, 28, 28), "float32"))
    done = run_convkit("export", f"{MODELS}:reference_cnn", "--data", data, "-o", str(cnn))
    assert done.returncode == 0, done.stdout + done.stderr
    assert dims(cnn) == {"x": ["batch", 1, 28, 28]}
    assert "kept static: x axis 1 (1): torch.export fixes sizes 0 and 1" in done.stdout
    assert "kept static: x axes 2, 3 (28, 28): the model fixes them" in done.stdout


MASKED = """
import torch
from torch import nn


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.proj = nn.Linear(4, 8)

    def forward(self, input_ids, attention_mask, features):
        hidden = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return hidden + self.proj(features).unsqueeze(1)


def masked():
    torch.manual_seed(0)
    return Masked().eval()
"""


def test_inputs_that_share_a_dim_share_its_name(tmp_path):
    (tmp_path / "masked.py").write_text(MASKED)
    source = f"{tmp_path / 'masked.py'}:masked"
    model = tmp_path / "masked.onnx"
    shapes = {
        "input_ids": ((2, 7), "int64"),
        "attention_mask": ((2, 7), "int64"),
        "features": ((2, 4), "float32"),
    }
    done = run_convkit("export", source, "--data", npz(tmp_path / "a.npz", **shapes), "-o", str(model))
    assert done.returncode == 0, done.stdout + done.stderr
    assert dims(model) == {
        "input_ids": ["batch", "seq"],
        "attention_mask": ["batch", "seq"],
        "features": ["batch", 4],
    }
    assert dims(model, "output") == {"output": ["batch", "seq", 8]}
    assert "kept static: features axis 1 (4): the model fixes it" in done.stdout
    other = {
        "input_ids": ((3, 11), "int64"),
        "attention_mask": ((3, 11), "int64"),
        "features": ((3, 4), "float32"),
    }
    verify(model, source, npz(tmp_path / "b.npz", 1, **other), tmp_path / "r.json")


def test_the_torchscript_exporter_gets_the_same_dims(tmp_path):
    source = f"{MODELS}:token_lstm"
    model = tmp_path / "ts.onnx"
    data = npz(tmp_path / "a.npz", tokens=((2, 5), "int64"))
    done = run_convkit("export", source, "--data", data, "--exporter", "torchscript", "-o", str(model))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with torchscript" in done.stdout
    assert dims(model) == {"tokens": ["batch", "seq"]}
    verify(model, source, npz(tmp_path / "b.npz", 1, tokens=((3, 9), "int64")), tmp_path / "r.json")


def test_saved_programs_keep_the_dims_they_were_saved_with_and_say_so(tmp_path):
    import torch

    from convkit.core.sources import load_factory

    model = load_factory(f"{MODELS}:token_lstm")
    tokens = torch.zeros(2, 5, dtype=torch.int64)
    scripted = tmp_path / "lstm.pt"
    torch.jit.trace(model, (tokens,)).save(str(scripted))
    program = tmp_path / "lstm.pt2"
    batch = torch.export.Dim("n")
    torch.export.save(
        torch.export.export(model, (tokens,), dynamic_shapes={"tokens": {0: batch}}), str(program)
    )
    data = npz(tmp_path / "a.npz", tokens=((2, 5), "int64"))
    for saved, why in (
        (scripted, "a TorchScript model cannot say"),
        (program, "the .pt2 was exported with it"),
    ):
        out = tmp_path / f"{saved.suffix[1:]}.onnx"
        done = run_convkit("export", str(saved), "--data", data, "-o", str(out))
        assert done.returncode == 0, done.stdout + done.stderr
        assert dims(out) == {"tokens": ["batch", 5]}
        assert f"kept static: tokens axis 1 (5): {why}" in done.stdout


BAD_CONFIG = """from transformers import LlamaConfig, LlamaForCausalLM


def llama():
    config = LlamaConfig(vocab_size=64, hidden_size=30, num_attention_heads=4, num_hidden_layers=1)
    return LlamaForCausalLM(config).eval()
"""

FAILS_ON_FIRST_RUN = """from torch import nn


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(32, 28)  # 4 heads of 7, where forward expects 4 heads of 8

    def forward(self, x):
        batch, seq, _ = x.shape
        return self.q_proj(x).view(batch, seq, 4, 8)


def attention():
    return Attention().eval()
"""


def test_a_model_that_fails_to_build_or_to_run_is_the_users_error_with_their_line(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "bad_llama.py").write_text(BAD_CONFIG)
    data = npz(tmp_path / "ids.npz", input_ids=((2, 8), "int64"))
    done = run_convkit(
        "export", f"{tmp_path / 'bad_llama.py'}:llama", "--data", data, "-o", str(tmp_path / "m.onnx")
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "hidden size (30) is not a multiple of the number of attention heads (4)" in done.stderr
    assert "(bad_llama.py:5)" in done.stderr
    assert "Traceback" not in done.stderr and "bug in convkit" not in done.stderr

    (tmp_path / "attention.py").write_text(FAILS_ON_FIRST_RUN)
    data = npz(tmp_path / "x.npz", x=((2, 5, 32), "float32"))
    done = run_convkit(
        "export", f"{tmp_path / 'attention.py'}:attention", "--data", data, "-o", str(tmp_path / "a.onnx")
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "RuntimeError" in done.stderr and "(attention.py:11)" in done.stderr
    assert "Traceback" not in done.stderr and "bug in convkit" not in done.stderr
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "a.onnx").exists()


# ------------------------------------------------------------------------- the spec-level contract itself
def test_data_specs_leave_every_axis_but_the_batch_to_the_model():
    arrays = {"ids": np.zeros((2, 16), np.int64), "pixels": np.zeros((2, 3, 8, 8), np.float32)}
    specs = specs_from_arrays(arrays, dynamic_if_allowed=True)
    assert [(s.dims, s.dynamic_if_allowed) for s in specs] == [
        (["batch", 16], (1,)),
        (["batch", 3, 8, 8], (1, 2, 3)),
    ]
    # the default is what it always was: a front end that ignores the field sees fixed sizes
    assert [s.dynamic_if_allowed for s in specs_from_arrays(arrays)] == [(), ()]
    fixed = make_static(specs, {name: value.shape for name, value in arrays.items()})
    assert [(s.dims, s.dynamic_if_allowed) for s in fixed] == [([2, 16], ()), ([2, 3, 8, 8], ())]


def test_dynamic_dims_are_named_batch_seq_or_after_their_input():
    specs = [
        InputSpec("input_ids", ["batch", 16], "int64", dynamic_if_allowed=(1,)),
        InputSpec("attention_mask", ["batch", 16], "int64", dynamic_if_allowed=(1,)),
        InputSpec("decoder_input_ids", ["batch", 8], "int64", dynamic_if_allowed=(1,)),
        InputSpec("pixel_values", ["batch", 3, 32, 32], dynamic_if_allowed=(1, 2, 3)),
        InputSpec("lengths", ["batch", 2], "int64", dynamic_if_allowed=(1,)),
    ]
    symbols = {
        ("input_ids", 0): "s0", ("attention_mask", 0): "s0", ("decoder_input_ids", 0): "s0",
        ("pixel_values", 0): "s0", ("lengths", 0): "s0", ("lengths", 1): "s0",
        ("input_ids", 1): "s1", ("attention_mask", 1): "s1", ("decoder_input_ids", 1): "s2",
        ("pixel_values", 2): "s3", ("pixel_values", 3): "s4",
    }  # fmt: skip
    resolved = resolve_dynamic_dims(specs, symbols)
    assert [s.dims for s in resolved] == [
        ["batch", "seq"],
        ["batch", "seq"],
        ["batch", "decoder_input_ids_seq"],
        ["batch", 3, "pixel_values_dim2", "pixel_values_dim3"],
        ["batch", "batch"],  # an axis the model ties to the batch is the batch
    ]
    assert all(s.dynamic_if_allowed == () for s in resolved)
    # the core reads the same answer back from the file, whatever the front end
    exported = {"input_ids": ["batch", "seq"], "pixel_values": ["batch", 3, 32, None]}
    settled = settle_dynamic_dims(specs[:1] + specs[3:4], exported)
    assert [s.dims for s in settled] == [["batch", "seq"], ["batch", 3, 32, 32]]
    note = kept_static_note(
        [("pixel_values", 2, 32), ("pixel_values", 3, 32), ("x", 1, 4)], "the model fixes {it}"
    )
    assert note == "kept static: pixel_values axes 2, 3 (32, 32); x axis 1 (4): the model fixes them"
    assert kept_static_note([], "why") is None
