"""A check that cannot fail says so: `convkit verify` on a real torch model whose output ignores its input
warns in the text and the JSON report, and the exit code stays what parity decides."""

from __future__ import annotations

import json

import pytest
from conftest import run_convkit

pytest.importorskip("torch")

MODEL = '''
import torch


class Constant(torch.nn.Module):
    """Ten classes at 0.1 whatever the input (a fresh classifier whose features all die)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        return torch.softmax(self.fc(torch.zeros_like(x)) * 0.0, dim=1)


class Follows(torch.nn.Module):
    def forward(self, x):
        return torch.tanh(x)


def constant():
    return Constant().eval()


def follows():
    return Follows().eval()
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("degenerate")
    (folder / "models.py").write_text(MODEL)
    for name in ("constant", "follows"):
        done = run_convkit(
            "export",
            f"{folder / 'models.py'}:{name}",
            "--input",
            "x:batch,4",
            "-o",
            str(folder / name / "m.onnx"),
        )
        assert done.returncode == 0, done.stdout + done.stderr
    return folder


def test_a_constant_output_is_a_warning_in_text_and_json(models, tmp_path):
    report = tmp_path / "report.json"
    done = run_convkit(
        "verify", str(models / "constant" / "m.onnx"), "--source", f"{models / 'models.py'}:constant",
        "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    warnings = json.loads(report.read_text())["warnings"]
    assert [w["kind"] for w in warnings] == ["constant"]
    assert "this check cannot detect a wrong model" in warnings[0]["message"]
    assert f"warning: {warnings[0]['message']}" in done.stdout
    assert "PASS" in done.stdout and "degenerate output(s): see the warnings" in done.stdout


def test_an_output_that_follows_its_input_has_no_warning(models, tmp_path):
    report = tmp_path / "report.json"
    done = run_convkit(
        "verify", str(models / "follows" / "m.onnx"), "--source", f"{models / 'models.py'}:follows",
        "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(report.read_text())["warnings"] == []
    assert "warning:" not in done.stdout
