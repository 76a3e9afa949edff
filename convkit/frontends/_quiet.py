"""One way to silence a framework while it works: ``with Quiet(verbose) as quiet: ...``.

NOTE: why at the file-descriptor level: TensorFlow's C++ runtime writes to fd 2 directly (oneDNN and CPU
feature banners, absl warnings), parts of torch write from C++ or through logging handlers bound to the
original streams, and paddle2onnx prints from C++; neither ``redirect_stdout`` nor ``logging`` reaches
those. Python-level writes, log records and warnings are captured too, and kept: the text for error hints
(``tail``), the warnings for notes (the TorchScript tracer's). With ``verbose`` nothing is hidden: warnings
are still recorded for the caller, then shown when the block ends.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from types import TracebackType

# lines frameworks print on every start, useless in an error hint
_BANNERS = ("absl::InitializeLog", "oneDNN custom operations")


class Quiet:
    """Silence standard output, standard error, logging and warnings while a block runs.

    Attributes:
        verbose: show everything instead (warnings are still recorded).
        text: what was printed inside the block, once it has ended.
        warnings: the warnings raised inside the block.
    """

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.text = ""
        self.warnings: list[warnings.WarningMessage] = []
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> Quiet:
        stack = contextlib.ExitStack()
        try:
            if not self.verbose:
                self._silence(stack)
            recorder = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            self.warnings = recorder if recorder is not None else []
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def _silence(self, stack: contextlib.ExitStack) -> None:
        buffer = stack.enter_context(tempfile.TemporaryFile(mode="w+b"))  # noqa: SIM115 (closed by the stack)
        python_text = io.StringIO()

        def collect() -> None:
            buffer.seek(0)
            self.text = buffer.read().decode("utf-8", "replace") + python_text.getvalue()

        # NOTE: why registered first: exit callbacks run last-in first-out, so this reads the buffer after the
        # descriptors and streams are restored and before the buffer closes.
        stack.callback(collect)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd in (1, 2):
            try:
                saved = os.dup(fd)
            except OSError:
                continue
            os.dup2(buffer.fileno(), fd)
            stack.callback(os.close, saved)
            stack.callback(os.dup2, saved, fd)
            stack.callback(_flush_streams)
        stack.enter_context(contextlib.redirect_stdout(python_text))
        stack.enter_context(contextlib.redirect_stderr(python_text))
        previous = logging.root.manager.disable
        logging.disable(logging.CRITICAL)
        stack.callback(logging.disable, previous)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._stack is None:
            return
        self._stack.close()
        self._stack = None
        if self.verbose:
            # NOTE: why after the recording context: shown inside it they would be recorded again
            for item in self.warnings:
                warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)

    def tail(self, lines: int = 3) -> str:
        """The last meaningful lines printed inside the block (start-up banners left out), joined for an
        error hint."""
        kept = [
            line.strip()
            for line in self.text.splitlines()
            if line.strip() and not any(banner in line for banner in _BANNERS)
        ]
        return " | ".join(kept[-lines:])


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
