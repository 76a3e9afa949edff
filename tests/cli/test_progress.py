"""Long commands say what they are doing: a spinner on a terminal, plain lines in a pipe, or nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, ROOT, TESTCASES, run_convkit

ERASE = "\r\x1b[K"
TORCH_SOURCE = f"{FIXTURES / 'models' / 'torch_models.py'}:reference_cnn"


@pytest.fixture(autouse=True)
def _progress_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's default (the suite may silence progress elsewhere)."""
    monkeypatch.delenv("CONVKIT_PROGRESS", raising=False)


def _on_terminal(*args: str, stdout_pipe: bool = False) -> tuple[str, str, int]:
    """Run ``convkit ARGS`` in a fresh process on a pseudo-terminal (stdout on a pipe if asked); returns what
    the terminal showed, what the pipe got and the exit code."""
    leader, follower = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "convkit", *args],
        cwd=ROOT,
        stdin=follower,
        stdout=subprocess.PIPE if stdout_pipe else follower,
        stderr=follower,
        env=dict(os.environ, PYTHONWARNINGS="ignore", TERM="xterm", COLUMNS="200"),
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    piped = process.stdout.read() if process.stdout else b""
    code = process.wait(timeout=120)
    os.close(leader)
    return shown.decode().replace("\r\n", "\n"), piped.decode(), code


def test_a_terminal_shows_the_steps_and_then_clean_output() -> None:
    shown, _, code = _on_terminal("verify", str(TESTCASES / "reference_cnn"))
    assert code == 0, shown
    assert "verifying data set 2/2 in onnxruntime (cpu)" in shown
    # the spinner's line is erased before the report: everything after the last erase is the report alone
    report = shown.split(ERASE)[-1]
    assert report.startswith(str(TESTCASES / "reference_cnn")), report
    assert "verifying data set" not in report and "\r" not in report
    assert report.rstrip().splitlines()[-1].startswith("PASS: ")


@pytest.mark.parametrize(
    ("command", "shows"),
    [
        (["quantize", "--fp16", "-o", "{tmp}/q.onnx", "--eval-data", "{case}/test_data_set_0"], "timing"),
        (["bench", "--batch-sizes", "1", "--seconds", "0.05", "--iterations", "2"], "timing batch 1"),
    ],
    ids=["quantize", "bench"],
)
def test_other_long_commands_show_their_steps(command: list[str], shows: str, tmp_path: Path) -> None:
    case = TESTCASES / "reference_cnn"
    args = [part.format(tmp=tmp_path, case=case) for part in command]
    shown, _, code = _on_terminal(args[0], str(case / "model.onnx"), *args[1:])
    assert code == 0, shown
    assert shows in shown and ERASE in shown
    assert shows not in shown.split(ERASE)[-1]


def test_the_spinner_never_reaches_stdout(tmp_path: Path) -> None:
    case = str(TESTCASES / "reference_cnn")
    shown, piped, code = _on_terminal("verify", case, stdout_pipe=True)
    assert code == 0
    assert "verifying data set 2/2" in shown and ERASE in shown
    plain = run_convkit("verify", case, "--quiet")
    assert piped == plain.stdout


def test_a_pipe_gets_one_plain_line_per_step(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    done = run_convkit("export", TORCH_SOURCE, "-o", str(tmp_path / "m.onnx"), "--input", "x:batch,1,28,28")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[:2] == [f"convkit: loading {TORCH_SOURCE}", "convkit: running torch on the example inputs"]
    assert "convkit: capturing and converting with the torch exporter" in lines
    assert "convkit: verifying data set 1/1 in onnxruntime (cpu)" in lines
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    assert "convkit:" not in done.stdout


def test_quiet_shows_nothing_but_errors(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    quiet = run_convkit(
        "export", TORCH_SOURCE, "-o", str(tmp_path / "m.onnx"), "--input", "x:batch,1,28,28", "--quiet"
    )
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert "PASS" in quiet.stdout
    failed = run_convkit("-q", "verify", str(tmp_path / "absent.onnx"))
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: "), failed.stderr
