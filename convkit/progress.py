"""What a long command is doing, on stderr: a spinner on a terminal, plain lines elsewhere, or nothing.

The flow announces its steps where the work happens (``step("capturing the model")``); the CLI opens one
reporter per command (``reporting``). Without a reporter (the Python API, the pytest plugin) ``step`` does
nothing, so library users see no output they did not ask for.

NOTE: why hand-written on the standard library: click's ``progressbar`` needs a known length and draws a
bar, while these steps have no length (a framework's import, an exporter's trace); ``rich`` would be a new
dependency for one spinner line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

ENV_VAR = "CONVKIT_PROGRESS"
MODES = ("auto", "spinner", "lines", "off")
_FRAMES = "|/-\\"
_TICK_S = 0.1


class _Reporter:
    """Shows the current step: redrawn in place (``spinner``) or one line per new step (``lines``)."""

    def __init__(self, stream: TextIO, spinner: bool) -> None:
        self._stream = stream
        self._spinner = spinner
        self._lock = threading.RLock()
        self._text = ""
        self._detail = ""
        self._started = time.monotonic()
        self._drawn = False
        self._paused = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if spinner:
            self._thread = threading.Thread(target=self._spin, name="convkit-progress", daemon=True)
            self._thread.start()

    def step(self, text: str) -> None:
        with self._lock:
            if text == self._text and not self._paused:
                return
            self._text, self._detail = text, ""
            self._started = time.monotonic()
            self._paused = False
            if self._spinner:
                self._draw()
            else:
                self._stream.write(f"convkit: {text}\n")
                self._stream.flush()

    def detail(self, text: str) -> None:
        with self._lock:
            self._detail = text

    def clear(self) -> None:
        """Erase the spinner's line and keep it off until the next step (other output comes first)."""
        with self._lock:
            self._paused = True
            if self._drawn:
                self._stream.write("\r\x1b[K")
                self._stream.flush()
                self._drawn = False

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.clear()

    def _spin(self) -> None:
        frame = 0
        while not self._stop.wait(_TICK_S):
            frame += 1
            with self._lock:
                if not self._paused:
                    self._draw(frame)

    def _draw(self, frame: int = 0) -> None:
        elapsed = time.monotonic() - self._started
        line = f"{_FRAMES[frame % len(_FRAMES)]} {self._text}"
        if self._detail:
            line += f" ({self._detail})"
        line += f"  {elapsed:.0f}s"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self._stream.write("\r\x1b[K" + line[:width])
        self._stream.flush()
        self._drawn = True


class _ClearingStream:
    """``sys.stdout`` / ``sys.stderr`` while the spinner runs: any text written clears the spinner first.

    NOTE: why wrap the streams: a command's own output (a report, JSON, a warning) must never land on the
    spinner's line; wrapping them once here covers click.echo, print and warnings without each command
    remembering to clear.
    """

    def __init__(self, stream: TextIO, reporter: _Reporter) -> None:
        self._wrapped = stream
        self._reporter = reporter

    def write(self, text: Any) -> int:
        if text:
            with self._reporter._lock:
                self._reporter.clear()
                return int(self._wrapped.write(text))
        return int(self._wrapped.write(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


_active: _Reporter | None = None
_command_started: float | None = None


def step(text: str) -> None:
    """Announce the step the command is in (``"capturing the model"``); nothing without a reporter."""
    if _active is not None:
        _active.step(text)


def detail(text: str) -> None:
    """Detail of the current step shown beside it on the spinner (``"round 12"``); lines mode skips it."""
    if _active is not None:
        _active.detail(text)


def clear() -> None:
    """Erase the spinner's line now (before writing to the terminal some other way than sys.stdout/err)."""
    if _active is not None:
        _active.clear()


def command_seconds() -> float | None:
    """Seconds since the running command started (its ``reporting`` block), ``None`` outside a command.

    NOTE: why here: this block is the one place that brackets every command, quiet or not; the JUnit files
    take their time from it.
    """
    return None if _command_started is None else time.monotonic() - _command_started


def progress_mode(quiet: bool = False, stream: TextIO | None = None) -> str:
    """``spinner``, ``lines`` or ``off``: ``--quiet`` or ``CONVKIT_PROGRESS=off`` silence it, a terminal
    gets the spinner, anything else plain lines (``CONVKIT_PROGRESS=lines|spinner`` forces one)."""
    wanted = os.environ.get(ENV_VAR, "auto").strip().lower()
    if quiet or wanted == "off":
        return "off"
    if wanted in ("spinner", "lines"):
        return wanted
    target = stream or sys.stderr
    try:
        tty = target.isatty()
    except (AttributeError, ValueError):
        tty = False
    # NOTE: why TERM=dumb counts as no terminal: such a terminal (an editor's shell) cannot erase a line
    return "spinner" if tty and os.environ.get("TERM") != "dumb" else "lines"


@contextlib.contextmanager
def reporting(quiet: bool = False, stream: TextIO | None = None) -> Iterator[None]:
    """Report steps announced inside the block; the spinner's line is erased when the block ends.

    Args:
        quiet: report nothing (``--quiet``).
        stream: where to report; ``sys.stderr`` when ``None``.
    """
    global _active, _command_started
    if _command_started is not None:
        yield
        return
    mode = progress_mode(quiet, stream)
    _command_started = time.monotonic()
    if mode == "off":
        try:
            yield
        finally:
            _command_started = None
        return
    target = stream or sys.stderr
    own = _own_copy(target)
    reporter = _Reporter(own or target, spinner=mode == "spinner")
    saved = sys.stdout, sys.stderr
    if mode == "spinner":
        sys.stdout = _ClearingStream(sys.stdout, reporter)
        sys.stderr = _ClearingStream(sys.stderr, reporter)
    _active = reporter
    try:
        yield
    finally:
        _active, _command_started = None, None
        reporter.close()
        sys.stdout, sys.stderr = saved
        if own is not None:
            own.close()


def _own_copy(stream: TextIO) -> TextIO | None:
    """A stream of our own on ``stream``'s file descriptor (a duplicate), or ``None`` where it has none.

    NOTE: why a duplicate: while a framework runs, ``Quiet`` points descriptors 1 and 2 at a buffer whose
    text becomes the error's hint; on a descriptor of its own the progress still reaches the terminal and
    never lands in that hint.
    """
    try:
        stream.flush()
        fd = os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return open(fd, "w", encoding=encoding, errors="replace", closefd=True)
