"""SIGTERM interrupts a command as Ctrl-C does: exit 130, no staging folder and no half-written file left.

These run convkit in a process of its own: a signal is what the test sends.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch"),
]

SLOW_MODEL = """
import time, pathlib, torch

class Slow(torch.nn.Module):
    def forward(self, x):
        if not torch.compiler.is_compiling() and not torch.jit.is_tracing():
            pathlib.Path(__file__).with_name("forward-started").touch()
            time.sleep(1)
        return x * 2

def make():
    return Slow().eval()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_export_leaves_nothing_behind(tmp_path, signum):
    (tmp_path / "slow.py").write_text(SLOW_MODEL)
    out = tmp_path / "out"
    command = ["export", f"{tmp_path / 'slow.py'}:make", "--input", "x:batch,4", "-o", str(out / "m.onnx")]
    process = subprocess.Popen(
        [sys.executable, "-m", "convkit", *command, "-f", "torch"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    # the staging folder exists once the reference run is done and the exporter has started
    while not (out.exists() and any(p.name.startswith(".convkit-staging") for p in out.iterdir())):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the export never reached its staging folder"
        time.sleep(0.05)
    os.kill(process.pid, signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout + stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir()) == []
