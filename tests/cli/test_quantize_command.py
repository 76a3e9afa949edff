"""``convkit quantize`` gates every model: a classifier on top-1 agreement, a regression on its error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convkit.graph.model import load_onnx
from tests.conftest import TESTCASES, run_convkit

# A user's regression model: one value from 8 features, the first a raw count in the thousands that barely
# matters. Quantized per tensor, int8's input step (about 4) rounds the small features to zero: the model
# loses what it predicts.
REGRESSION_MLP = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    with torch.no_grad():
        net[0].weight[:, 0] *= 1e-3
    return net.eval()
"""


def _features(path: Path, seed: int) -> Path:
    x = np.random.default_rng(seed).random((128, 8), dtype=np.float32)
    x[:, 0] *= 1000
    np.savez(path, input=x)
    return path


@pytest.fixture(scope="module")
def regression_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("mlp")
    (folder / "mlp.py").write_text(REGRESSION_MLP)
    source, out = f"{folder / 'mlp.py'}:make", str(folder / "mlp.onnx")
    done = run_convkit("export", source, "-o", out, "--input", "input:batch,8", "-q")
    assert done.returncode == 0, done.stderr
    return folder / "mlp.onnx"


def test_a_regression_model_that_loses_parity_is_refused(regression_mlp: Path, tmp_path: Path) -> None:
    calib, held_out = _features(tmp_path / "calib.npz", 0), _features(tmp_path / "eval.npz", 1)
    out = tmp_path / "int8.onnx"
    args = ["quantize", str(regression_mlp), "-o", str(out), "--calibration", str(calib)]
    done = run_convkit(*args, "--eval-data", str(held_out), "--json", str(tmp_path / "q.json"), "-q")
    assert done.returncode == 1, done.stdout + done.stderr
    assert not out.exists()
    found = json.loads((tmp_path / "q.json").read_text())
    assert found["top1_agreement"] is None and not found["passed"] and not found["written"]
    [check] = found["checks"]
    assert check["name"] == "relative error" and check["bar"] == 0.05 and not check["passed"]
    assert check["value"] > 0.5
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("FAIL: relative error") and "not written" in last
    assert f"relative error {check['value']:.3g} (bar <= 0.05): FAIL" in done.stdout


def test_an_error_bound_that_holds_writes_the_regression_model(regression_mlp: Path, tmp_path: Path) -> None:
    calib = _features(tmp_path / "calib.npz", 0)
    out = tmp_path / "fp16.onnx"
    done = run_convkit("quantize", str(regression_mlp), "-o", str(out), "--fp16", "--eval-data", str(calib))
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.exists() and f"PASS: wrote {out}" in done.stdout
    assert "relative error" in done.stdout and ": pass" in done.stdout


def test_the_text_says_what_the_json_holds(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.random((32, 1, 28, 28), dtype=np.float32))
    out, report = tmp_path / "int8.onnx", tmp_path / "q.json"
    done = run_convkit(
        "quantize",
        str(TESTCASES / "reference_cnn" / "model.onnx"),
        "-o",
        str(out),
        "--calibration",
        str(tmp_path / "calib.npz"),
        "--max-abs-diff",
        "1e-9",
        "--force",
        "--json",
        str(report),
    )
    found = json.loads(report.read_text())
    assert done.returncode == 1 and found["written"] and out.exists()
    names = [check["name"] for check in found["checks"]]
    assert names == ["top-1 agreement", "max abs diff"]
    top1, abs_bound = found["checks"]
    assert top1["passed"] and not abs_bound["passed"]
    assert f"top-1 agreement {top1['value']:.2%} (bar >= 99.00%): pass" in done.stdout
    assert f"max abs diff {abs_bound['value']:.3g} (bar <= 1e-09): FAIL" in done.stdout
    smaller = "smaller" if not found["larger"] else "LARGER"
    assert f"{found['fp32_bytes']:,} -> static {found['quantized_bytes']:,} bytes" in done.stdout
    assert smaller in done.stdout
    speed = "faster" if found["faster"] else "NOT faster"
    assert f"({found['speedup']:.2f}x: {speed})" in done.stdout
    assert "written anyway (--force)" in done.stdout.splitlines()[-1]


@pytest.mark.parametrize("option", ["--max-rel-error=-1", "--min-cosine=2", "--max-abs-diff=nan"])
def test_a_bound_out_of_range_is_a_usage_error(option: str, tmp_path: Path) -> None:
    model = str(TESTCASES / "reference_cnn" / "model.onnx")
    done = run_convkit("quantize", model, "-o", str(tmp_path / "q.onnx"), "--fp16", option)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert option.split("=")[0] in done.stderr


# A small GPT-2 with random weights (4 blocks, width 128, 8000 tokens): int8 on every weighted node flips
# about 2 % of its next-token predictions.
TINY_GPT2 = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel


class Logits(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        config = GPT2Config(n_layer=4, n_embd=128, n_head=2, vocab_size=8000, n_positions=32, use_cache=False)
        self.lm = GPT2LMHeadModel(config).eval()

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids, use_cache=False).logits


def make():
    return Logits().eval()
"""


def test_a_transformer_keeps_its_most_sensitive_nodes_float32_and_passes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    (tmp_path / "gpt2.py").write_text(TINY_GPT2)
    model = tmp_path / "gpt2.onnx"
    done = run_convkit(
        "export",
        f"{tmp_path / 'gpt2.py'}:make",
        "-o",
        str(model),
        "--input",
        "input_ids:batch,16:int64",
        "-q",
    )
    assert done.returncode == 0, done.stderr
    np.savez(tmp_path / "eval.npz", input_ids=np.random.default_rng(1).integers(0, 8000, (32, 16)))
    out, report = tmp_path / "int8.onnx", tmp_path / "q.json"
    args = [
        "quantize",
        str(model),
        "-o",
        str(out),
        "--mode",
        "dynamic",
        "--eval-data",
        str(tmp_path / "eval.npz"),
    ]
    done = run_convkit(*args, "--json", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(report.read_text())
    assert found["passed"] and found["written"] and out.exists()
    assert found["top1_agreement"] >= 0.99 and found["per_channel"] is True  # per-tensor, then per-channel
    [kept] = [note for note in found["notes"] if "weighted node(s) in float32" in note]
    assert kept.startswith("kept ") and " of 17 weighted node(s) in float32" in kept
    graph = load_onnx(model).proto.graph
    head = next(node.name for node in graph.node if node.output[0] == graph.output[0].name)
    assert head in kept.split("): ")[-1].split(", ")  # the lm_head, tied to the embedding
    assert f"note: {kept}" in done.stdout
    assert any("MatMul(s) of two activations (attention)" in note for note in found["notes"])
