"""A convkit killed while its Paddle worker runs leaves no worker behind and no ``convkit-paddle-*`` folder:
SIGTERM unwinds like Ctrl-C (the worker's process group is stopped, its folders removed), and SIGKILL, which
nothing can catch, still ends the worker (it dies with its parent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from convkit.frontends._worker.envs import unavailable_reason

_REASON = unavailable_reason("paddle")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.paddle

MODELS = ROOT / "fixtures" / "models" / "paddle_models.py"


def _workers(marker: Path) -> list[int]:
    """Processes whose command line names ``marker`` (the test's own temporary folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(marker) in command and "protocol.py" in command:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_convkit_stops_its_worker(tmp_path, signum):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONWARNINGS="ignore")
    command = ["export", f"{MODELS}:reference_cnn", "-f", "paddle", "--input", "x:batch,1,28,28"]
    process = subprocess.Popen(
        [sys.executable, "-m", "convkit", *command, "-o", str(tmp_path / "out" / "model.onnx")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not _workers(scratch):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.05)
    process.send_signal(signum)
    process.communicate(timeout=60)
    if signum == signal.SIGTERM:
        assert process.returncode == 130
    deadline = time.monotonic() + 30
    while _workers(scratch) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _workers(scratch) == []
    if signum == signal.SIGTERM:
        assert sorted(p.name for p in scratch.iterdir()) == []
        assert not (tmp_path / "out").exists() or sorted((tmp_path / "out").iterdir()) == []
