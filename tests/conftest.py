"""Shared helpers: the repository root, the bundled fixtures, and ways to run convkit as a user does.

``run_convkit`` runs the command in this interpreter (no start-up: torch and TensorFlow are imported once per
test session, not once per command); ``run_convkit_process`` in a fresh one, for what only a fresh process
shows (what gets imported, signals, variables read at import).
"""

from __future__ import annotations

import contextlib
import io
import json
import locale
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

# the suite checks stderr exactly; tests/cli/test_progress.py checks the progress lines themselves
os.environ.setdefault("CONVKIT_PROGRESS", "off")
# NOTE: why: a shell starts background jobs with SIGINT ignored, and every child inherits that; the interrupt
# tests press Ctrl-C (SIGINT) as in a terminal, so the suite gives itself and its children the default
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
# the package's own data: the framework-free test cases and the canonical weights (convkit/reference/data)
TESTCASES = ROOT / "convkit" / "reference" / "data" / "testcases"
CANONICAL_WEIGHTS = ROOT / "convkit" / "reference" / "data" / "weights.npz"


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with its sha256: the whole state a command could have touched (compare
    before and after to prove that a refused command changed nothing)."""
    import hashlib

    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def pytest_configure(config: pytest.Config) -> None:
    """One marker per front-end folder (``pytest.mark.torch``, ``pytest.mark.keras_backend``), from the
    registry: a new framework's tests get theirs from its registry entry."""
    from convkit.frontends import REGISTRY

    for folder in sorted({info.entry.split(":")[0].split(".")[2] for info in REGISTRY}):
        config.addinivalue_line("markers", f"{folder}: needs the {folder} front end's framework")


def run_convkit(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``convkit ARGS`` in this interpreter as typed in a shell (``convkit.cli.main``, output captured at
    the file-descriptor level, warnings ignored as with ``PYTHONWARNINGS=ignore``); returns the finished
    command as a process would be. Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    return _in_process(list(args), cwd or ROOT, timeout)


def run_convkit_process(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``convkit ARGS`` in a fresh interpreter (``python -m convkit``), with ``env`` added to this
    process's environment; returns the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "convkit", *args],
        cwd=cwd or ROOT,
        env=dict(os.environ, PYTHONWARNINGS="ignore", **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that ``main()``'s ``except Exception`` lets it through."""


def _in_process(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "convkit", *args]
    with _process_state(args, cwd), _captured() as captured:
        try:
            with _alarm(timeout):
                code = _main(args)
        except _Timeout:
            captured.unwind()
            raise subprocess.TimeoutExpired(command, timeout, captured.stdout, captured.stderr) from None
    return subprocess.CompletedProcess(command, code, captured.stdout, captured.stderr)


def _main(args: list[str]) -> int:
    """``convkit.cli.main(args)``; the status a process would exit with (a message given to ``sys.exit`` is
    written to stderr, as Python does)."""
    from convkit.cli import main

    try:
        main(args)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Interrupt the command after ``seconds`` (the main thread only: elsewhere no time limit)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(_signum: int, _frame: object) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _process_state(args: list[str], cwd: Path) -> Iterator[None]:
    """Enter ``cwd`` with warnings ignored (``PYTHONWARNINGS=ignore``, also for the workers the command
    starts); on the way out, put back what a command may change in a process: the working directory,
    ``sys.argv``, the environment, logging, warnings filters, signal handlers, torch's thread count and the
    global random generators (Python's, NumPy's, torch's), which model factories and training reseed."""
    saved_cwd = os.getcwd()
    saved_argv = sys.argv[:]
    saved_env = dict(os.environ)
    saved_disable = logging.root.manager.disable
    saved_root = (logging.root.level, logging.root.handlers[:])
    saved_signals = {number: signal.getsignal(number) for number in _handled_signals()}
    saved_threads = _torch_threads()
    saved_random = _random_states()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.environ["PYTHONWARNINGS"] = "ignore"
            sys.argv = ["convkit", *args]
            os.chdir(cwd)
            yield
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        for name in set(os.environ) - set(saved_env):
            del os.environ[name]
        for name, value in saved_env.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
        logging.disable(saved_disable)
        logging.root.setLevel(saved_root[0])
        logging.root.handlers[:] = saved_root[1]
        for number, handler in saved_signals.items():
            if signal.getsignal(number) is not handler:
                with contextlib.suppress(OSError, ValueError, TypeError):
                    signal.signal(number, handler)
        if saved_threads is not None and _torch_threads() != saved_threads:
            sys.modules["torch"].set_num_threads(saved_threads)
        _restore_random_states(saved_random)


def _handled_signals() -> list[int]:
    """The signals whose handlers Python may set (those it knows a handler of)."""
    if threading.current_thread() is not threading.main_thread():
        return []
    return [number for number in signal.valid_signals() if signal.getsignal(number) is not None]


def _random_states() -> dict[str, object]:
    import numpy as np

    states: dict[str, object] = {"python": random.getstate(), "numpy": np.random.get_state()}
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_rng_state"):
        states["torch"] = torch.get_rng_state()
    return states


def _restore_random_states(states: dict[str, object]) -> None:
    import numpy as np

    random.setstate(states["python"])  # type: ignore[arg-type]
    np.random.set_state(states["numpy"])  # type: ignore[arg-type]
    if "torch" in states:
        sys.modules["torch"].set_rng_state(states["torch"])


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None and hasattr(torch, "get_num_threads") else None


class _Captured:
    """What the command wrote to file descriptors 1 and 2 (and so to ``sys.stdout`` / ``sys.stderr``)."""

    def __init__(self, files: tuple[IO[bytes], IO[bytes]]) -> None:
        self._files = files
        self._unwind: contextlib.ExitStack | None = None
        self.stdout = ""
        self.stderr = ""

    def unwind(self) -> None:
        """Restore the descriptors and streams now and read what was written."""
        if self._unwind is not None:
            self._unwind.close()
            self._unwind = None
        self.stdout, self.stderr = (_decode(file) for file in self._files)


def _decode(file: IO[bytes]) -> str:
    """Text as ``subprocess.run(text=True)`` reads it: the locale's encoding, universal newlines."""
    file.seek(0)
    encoding = locale.getpreferredencoding(False)
    return io.TextIOWrapper(io.BytesIO(file.read()), encoding=encoding, errors="replace").read()


@contextlib.contextmanager
def _captured() -> Iterator[_Captured]:
    """Send file descriptors 1 and 2 to temporary files and point ``sys.stdout`` / ``sys.stderr`` at them,
    as in a process whose output is piped; everything is put back when the block ends, even by an
    exception (then what was captured is written to this process's streams, for pytest's report)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        captured = _Captured((out, err))
        with contextlib.ExitStack() as stack:
            captured._unwind = stack
            _flush(sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
            for fd, file in ((1, out), (2, err)):
                saved = os.dup(fd)
                stack.callback(os.close, saved)
                stack.callback(os.dup2, saved, fd)
                os.dup2(file.fileno(), fd)
            # NOTE: why flush the interpreter's own streams last: what they hold was written by the command
            stack.callback(_flush, sys.__stdout__, sys.__stderr__)
            stdout = _stream(1, line_buffering=False, errors="strict")
            stderr = _stream(2, line_buffering=True, errors="backslashreplace")
            stack.callback(_flush, stdout, stderr)
            stack.enter_context(contextlib.redirect_stdout(stdout))
            stack.enter_context(contextlib.redirect_stderr(stderr))
            try:
                yield captured
            except BaseException:
                captured.unwind()
                sys.stdout.write(captured.stdout)
                sys.stderr.write(captured.stderr)
                raise
        captured.unwind()


def _stream(fd: int, line_buffering: bool, errors: str) -> io.TextIOWrapper:
    """A text stream on ``fd`` as Python opens a pipe's (the descriptor stays open when it is dropped)."""
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(
        io.BufferedWriter(raw), encoding=locale.getpreferredencoding(False), errors=errors,
        line_buffering=line_buffering,
    )  # fmt: skip


def _flush(*streams: IO[str] | None) -> None:
    for stream in streams:
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.flush()


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
    return TESTCASES / "reference_cnn"


@pytest.fixture
def old_opset_case() -> Path:
    return TESTCASES / "old_opset_mlp"
