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


@pytest.fixture
def cnn_case() -> Path:
    return FIXTURES / "testcases" / "reference_cnn"


@pytest.fixture
def old_opset_case() -> Path:
    return FIXTURES / "testcases" / "old_opset_mlp"
