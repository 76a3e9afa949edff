"""Shared helpers: the repository root, the bundled fixtures, and a way to run convkit as a user does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def run_convkit(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``convkit ARGS`` in a fresh interpreter, as typed in a shell; returns the finished process."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "convkit", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def verify_report(target: Path, *source: str, report: Path) -> dict:
    """``convkit verify TARGET --source SOURCE... --report REPORT`` as typed in a shell (``source`` may carry
    ``--framework F``); asserts that it held parity (exit 0) and returns the JSON report."""
    done = run_convkit("verify", str(target), "--source", *source, "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    report_data: dict = json.loads(report.read_text())
    return report_data


def tampered_copy(model: Path, initializer: str, target: Path) -> set[str]:
    """Write ``model`` to ``target`` with 0.5 added to the first value of ``initializer`` (a planted fault
    that verify must catch); returns the model's initializer names."""
    import onnx
    from onnx import numpy_helper

    loaded = onnx.load(str(model))
    for tensor in loaded.graph.initializer:
        if tensor.name == initializer:
            value = numpy_helper.to_array(tensor).copy()
            value.flat[0] += 0.5
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    onnx.save(loaded, str(target))
    return {tensor.name for tensor in loaded.graph.initializer}


def assert_verify_fails(target: Path, *source: str) -> None:
    """``convkit verify TARGET --source SOURCE...`` exits 1 and says by how much it would pass."""
    done = run_convkit("verify", str(target), "--source", *source)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout and "would pass" in done.stdout


def assert_matrix_agrees_with_torch(framework: str, exporter: str, tmp_path: Path) -> None:
    """``convkit matrix`` passes ``framework``'s row (its ONNX against itself) and, where torch is
    installed, the framework agrees with torch on the same weights."""
    import importlib.util

    frameworks = f"{framework},torch" if importlib.util.find_spec("torch") else framework
    report = tmp_path / "matrix.json"
    done = run_convkit(
        "matrix", "--frameworks", frameworks, "--out-dir", str(tmp_path / "m"), "--json", str(report)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(report.read_text())
    rows = {row["framework"]: row for row in found["frameworks"]}
    assert rows[framework]["status"] == "pass" and rows[framework]["exporter"] == exporter
    assert rows[framework]["max_abs_diff"] < 1e-5
    if "torch" in rows:
        assert found["pairwise_max_abs_diff"][framework]["torch"] < 1e-5


@pytest.fixture
def cnn_case() -> Path:
    return FIXTURES / "testcases" / "reference_cnn"


@pytest.fixture
def old_opset_case() -> Path:
    return FIXTURES / "testcases" / "old_opset_mlp"
