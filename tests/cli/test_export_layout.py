"""Exported artifacts that cannot collide: each model's test data are its own, ``verify`` refuses data that
are not the ones recorded for the model, and ``export`` never replaces what it did not write."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from conftest import run_convkit

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch"),
]

MODELS = """
import torch

class A(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
    def forward(self, x):
        return self.fc(x)

class B(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 2)
    def forward(self, feats):
        return torch.tanh(self.fc(feats))

def make_a():
    torch.manual_seed(0)
    return A().eval()

def make_b():
    torch.manual_seed(1)
    return B().eval()
"""


@pytest.fixture
def source(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    return tmp_path / "models.py"


def _export(source, factory: str, spec: str, output, *extra: str):
    return run_convkit("export", f"{source}:{factory}", "--input", spec, "-o", str(output), *extra)


def test_two_exports_into_one_folder_keep_both_models_verifiable(source, tmp_path):
    out = tmp_path / "out"
    assert _export(source, "make_a", "x:batch,4", out / "a.onnx").returncode == 0
    assert _export(source, "make_b", "feats:batch,6", out / "b.onnx").returncode == 0
    assert (out / "a.test_data" / "test_data_set_0" / "input_0.pb").is_file()
    assert (out / "b.test_data" / "test_data_set_0" / "input_0.pb").is_file()
    assert not (out / "test_data_set_0").exists()
    for name in ("a", "b"):
        done = run_convkit("verify", str(out / f"{name}.onnx"))
        assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((out / "a.manifest.json").read_text())
    assert manifest["test_data"] == "a.test_data/test_data_set_0" and manifest["test_data_sha256"]


def test_a_model_named_model_onnx_makes_its_folder_a_standard_test_case(source, tmp_path):
    case = tmp_path / "case"
    assert _export(source, "make_a", "x:batch,4", case / "model.onnx").returncode == 0
    assert (case / "test_data_set_0" / "output_0.pb").is_file()
    done = run_convkit("verify", str(case))
    assert done.returncode == 0, done.stdout + done.stderr


def test_test_data_recorded_for_another_model_are_refused_in_one_line(source, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _export(source, "make_a", "x:batch,4", a / "model.onnx").returncode == 0
    assert _export(source, "make_b", "feats:batch,6", b / "model.onnx").returncode == 0
    shutil.rmtree(a / "test_data_set_0")
    shutil.copytree(b / "test_data_set_0", a / "test_data_set_0")  # what two exports into one folder did
    done = run_convkit("verify", str(a / "model.onnx"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is not the test data recorded for model.onnx" in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 3


def test_export_replaces_its_own_output_but_not_a_file_it_did_not_write(source, tmp_path):
    target = tmp_path / "m.onnx"
    assert _export(source, "make_a", "x:batch,4", target).returncode == 0
    again = _export(source, "make_a", "x:batch,4", target)
    assert again.returncode == 0, again.stderr
    foreign = tmp_path / "theirs.onnx"
    foreign.write_bytes(b"someone else's model")
    refused = _export(source, "make_a", "x:batch,4", foreign)
    assert refused.returncode == 2 and "was not written by a convkit export" in refused.stderr
    assert foreign.read_bytes() == b"someone else's model"
    forced = _export(source, "make_a", "x:batch,4", foreign, "--force")
    assert forced.returncode == 0, forced.stderr
