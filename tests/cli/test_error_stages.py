"""Errors name the stage that failed, in the message and in the ``--report`` JSON, as a CI job reads them."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import FIXTURES, run_convkit, tampered_copy


def _report(path) -> dict:
    return json.loads(path.read_text())


def test_a_corrupt_model_fails_at_load_in_the_message_and_the_report(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07 not a protobuf")
    report = tmp_path / "r.json"
    done = run_convkit("verify", str(model), "--report", str(report))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines()[0].startswith("error: ") and "[stage: load]" in done.stderr
    found = _report(report)
    assert found["passed"] is False and found["error"]["stage"] == "load"
    assert found["error"]["type"] == "ModelLoadError" and found["error"]["message"]


def test_a_wrong_argument_is_an_input_error_without_a_stage_label(tmp_path):
    report = tmp_path / "r.json"
    done = run_convkit(
        "export",
        f"{FIXTURES / 'models' / 'torch_models.py'}:reference_cnn",
        "--input",
        "x:batch,1,28,28:complex",
        "-o",
        str(tmp_path / "m.onnx"),
        "--report",
        str(report),
    )
    assert done.returncode == 2
    assert "unknown dtype" in done.stderr and "[stage:" not in done.stderr
    assert _report(report)["error"]["stage"] == "input"


def test_a_planted_fault_fails_at_parity(cnn_case, tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    tampered_copy(cnn_case / "model.onnx", "fc2.bias", case / "model.onnx")
    for folder in cnn_case.glob("test_data_set_*"):
        (case / folder.name).mkdir()
        for file in folder.iterdir():
            (case / folder.name / file.name).write_bytes(file.read_bytes())
    report = tmp_path / "r.json"
    done = run_convkit("verify", str(case), "--report", str(report))
    assert done.returncode == 1, done.stdout + done.stderr
    found = _report(report)
    assert found["passed"] is False and found["stage"] == "parity"


@pytest.mark.torch
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_an_exporter_that_fixed_a_dynamic_dim_fails_at_conform(tmp_path):
    source = tmp_path / "fixed.py"
    source.write_text(
        "import torch\n"
        "class FixedBatch(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x.view(2, 4) * 2\n"
        "def make():\n"
        "    return FixedBatch().eval()\n"
    )
    report = tmp_path / "r.json"
    target = tmp_path / "m.onnx"
    done = run_convkit(
        "export", f"{source}:make", "--input", "x:batch,4", "-o", str(target), "--report", str(report)
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "fixed dimension 0 (batch)" in done.stderr and "[stage: conform]" in done.stderr
    assert _report(report)["error"]["stage"] == "conform"
    assert not target.exists()
