"""The core side of the worker protocol (see ``convkit.frontends._worker.env.protocol`` for the worker side).

``call_worker`` writes a request file, runs ``<env>/bin/python protocol.py <worker script> <request.json>``,
turns progress lines into callbacks, and returns the result or raises a ``ConvkitError``: the worker's own
error (mapped to the matching type), a crash (a signal: "crashed with SIGSEGV (exit code 139)") or a timeout.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convkit.errors import (
    ConvkitError,
    DataError,
    ExportError,
    InputFileError,
    ModelLoadError,
    UnsafeModelError,
)
from convkit.progress import step

TIMEOUT_VARIABLE = "CONVKIT_WORKER_TIMEOUT"
STDERR_TAIL_LINES = 40
MAX_TIMEOUT_S = 86400.0


class WorkerError(ConvkitError):
    """A worker failed: its own error, a crash or a timeout.

    Attributes:
        stderr_tail: the last lines the worker wrote on standard error (empty with ``verbose``, where they
            were shown as they came).
    """

    stage = "load"

    def __init__(
        self, message: str, hint: str | None = None, stderr_tail: str = "", *, stage: str | None = None
    ) -> None:
        super().__init__(message, hint, stage=stage)
        self.stderr_tail = stderr_tail


class WorkerCrashError(WorkerError):
    """The worker died without answering (a signal, or an exit code of its own)."""


class WorkerTimeoutError(WorkerError):
    """The worker did not answer in time and was stopped."""


class WorkerSourceError(WorkerError):
    """The worker could not import or call the user's ``file.py:factory``."""


# the worker's error ``type`` -> the ConvkitError the core raises
ERROR_TYPES: dict[str, type[ConvkitError]] = {
    "source": WorkerSourceError,
    "load": ModelLoadError,
    "data": DataError,
    "export": ExportError,
    "unsafe": UnsafeModelError,
    "input": InputFileError,
}


@dataclass
class Worker:
    """A worker script and the interpreter that runs it.

    Attributes:
        name: what messages call it (``paddle``).
        python: the framework environment's interpreter.
        script: the worker file (it must not import convkit).
        env: extra environment variables for the process (quieting the framework's logging ...).
        quiet_env: more variables, set only when not ``verbose``.
    """

    name: str
    python: Path
    script: Path
    env: dict[str, str] = field(default_factory=dict)
    quiet_env: dict[str, str] = field(default_factory=dict)


def default_timeout(seconds: float) -> float:
    """``seconds``, unless ``$CONVKIT_WORKER_TIMEOUT`` says otherwise."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if not text:
        return seconds
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    # NOTE: why bounded: threading.Timer cannot wait inf or 1e300 seconds (OverflowError in its thread, and
    # then no timeout at all); a day is longer than any export
    if not math.isfinite(value) or value <= 0 or value > MAX_TIMEOUT_S:
        raise ConvkitError(
            f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds between 0 and {MAX_TIMEOUT_S:.0f}",
            f"e.g. {TIMEOUT_VARIABLE}=1200",
        )
    return value


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _last_meaningful(tail: str) -> str:
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def call_worker(
    worker: Worker,
    request: Mapping[str, Any],
    workdir: Path,
    timeout: float,
    verbose: bool = False,
    progress: Callable[[Mapping[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one request in a fresh worker process and return its result.

    Args:
        worker: the script and its interpreter.
        request: JSON-serializable; ``request["kind"]`` picks the handler. Paths inside it should be
            absolute (the worker runs in the caller's working directory).
        workdir: a private folder for this call: ``request.json`` and ``stderr.log`` are written there.
        timeout: seconds before the worker is killed (its whole process group).
        verbose: let the worker's standard error through as it comes instead of keeping it.
        progress: called with each ``{"progress": {...}}`` payload, in order.

    Raises:
        WorkerError: the worker reported an error (or the mapped type: ``ExportError``, ``DataError`` ...),
            crashed (``WorkerCrashError``) or timed out (``WorkerTimeoutError``).
    """
    kind = str(request.get("kind"))
    request_path = workdir / "request.json"
    request_path.write_text(json.dumps(request), encoding="utf-8")
    stderr_path = workdir / "stderr.log"
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PYTHONNOUSERSITE="1",
        CONVKIT_PARENT_PID=str(os.getpid()),
        **worker.env,
    )
    if not verbose:
        env.update(worker.quiet_env)
    # NOTE: why drop PYTHONHOME: it would point the environment's interpreter at another installation.
    env.pop("PYTHONHOME", None)
    step(f"starting the {worker.name} environment ({kind})")
    with open(stderr_path, "wb") as stderr_file:
        process = subprocess.Popen(
            [
                str(worker.python),
                str(Path(__file__).with_name("env") / "protocol.py"),
                str(worker.script),
                str(request_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None if verbose else stderr_file,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
            # NOTE: why a session of its own: a timeout kills the worker and anything it started, together
            start_new_session=True,
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        # NOTE: why a daemon started inside the try: a SIGTERM that lands right after the worker starts (the
        # interrupt test sends it then) left a timer nobody cancelled, and Python's exit waited the whole
        # timeout for it
        timer.daemon = True
        answer: dict[str, Any] | None = None
        try:
            timer.start()
            assert process.stdout is not None
            for line in process.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # not the protocol's: the worker keeps its stdout for JSON only
                if not isinstance(message, dict):
                    continue
                if "progress" in message:
                    if progress is not None:
                        progress(message["progress"])
                elif "result" in message or "error" in message:
                    answer = message
            code = process.wait()
        except BaseException:
            kill()
            process.wait()
            raise
        finally:
            timer.cancel()
    tail = "" if verbose else _tail(stderr_path)
    what = f"the {worker.name} worker"
    # NOTE: why by request: a failure while exporting is the exporter's (capture); any other request loads
    # or runs the user's model in the framework
    stage = "capture" if kind == "export" else "load"
    if timed_out.is_set():
        raise WorkerTimeoutError(
            f"{what} did not finish its {kind} request within {timeout:.0f} s and was stopped",
            f"a larger model may need longer: set {TIMEOUT_VARIABLE}=SECONDS; --verbose shows its output",
            tail,
            stage=stage,
        )
    if answer is not None and "error" in answer:
        error_type = ERROR_TYPES.get(str(answer.get("type")), WorkerError)
        # NOTE: why two forms: a user error (a wrong input name) reads best as it is; anything else the
        # worker met (an exception from the framework) says where it happened.
        known = str(answer.get("type")) in ERROR_TYPES
        message = (
            str(answer["error"]) if known else f"{what} failed during its {kind} request: {answer['error']}"
        )
        hint = answer.get("hint") or "--verbose shows the worker's output"
        if issubclass(error_type, WorkerError):
            raise error_type(message, hint, tail, stage=None if known else stage)
        raise error_type(message, hint)
    if code == 0 and answer is not None:
        result = answer.get("result")
        return result if isinstance(result, dict) else {}
    last = _last_meaningful(tail)
    if code < 0:
        raise WorkerCrashError(
            f"{what} crashed with {_signal_name(-code)} (exit code {128 - code}) during its {kind} request"
            + (f"; its last output: {last}" if last else ""),
            "the framework itself failed; --verbose shows its output",
            tail,
            stage=stage,
        )
    raise WorkerCrashError(
        f"{what} exited with code {code} without an answer during its {kind} request"
        + (f"; its last output: {last}" if last else ""),
        "--verbose shows its output",
        tail,
        stage=stage,
    )
