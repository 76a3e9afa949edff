"""The error tree: user errors (``ConvkitError``) are printed as one line, internal bugs are not.

NOTE: why two families: a user who passes a wrong path needs one sentence and exit code 2, while a bug in
convkit needs the traceback. ``InternalError`` deliberately does not inherit from ``ConvkitError`` so that
``except ConvkitError`` in the CLI can never swallow a bug.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARITY_FAILED = 1
EXIT_USAGE = 2

STAGES = ("input", "load", "capture", "conform", "runtime", "parity")
"""Where a run can fail, in flow order: the user's arguments and data (``input``), reading the model or
source (``load``), the framework's exporter (``capture``), convkit's pass over its output (``conform``),
onnxruntime (``runtime``), the comparison (``parity``). NOTE: why: as torch.onnx's export status, the stage
says whose move it is next (fix the arguments, the model, the exporter, the runtime)."""


class ConvkitError(Exception):
    """A problem with the user's input or environment; printed without a traceback, exit code 2.

    Args:
        message: what went wrong, naming the file, input or option concerned.
        hint: what to do about it (one sentence), printed after the message.
    """

    exit_code = EXIT_USAGE
    stage = "input"
    """Which of ``STAGES`` failed; a subclass sets its usual one, a raise site may name another."""

    def __init__(self, message: str, hint: str | None = None, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if stage is not None:
            self.stage = stage

    def to_dict(self) -> dict[str, str | None]:
        """The error as JSON reports carry it."""
        return {"stage": self.stage, "type": type(self).__name__, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputFileError(ConvkitError):
    """A file or folder given by the user is missing, unreadable or of the wrong kind."""


class ModelLoadError(ConvkitError):
    """A model file exists but cannot be parsed, is truncated or fails the ONNX checker."""

    stage = "load"


class UnsafeModelError(ConvkitError):
    """A model asks for something convkit refuses to do by default (external data outside its folder,
    unpickling arbitrary code)."""

    stage = "load"


class DataError(ConvkitError):
    """Input data does not fit the model: wrong names, shapes or dtypes."""


class ProviderUnavailableError(ConvkitError):
    """The requested onnxruntime execution provider is not available in this installation."""

    stage = "runtime"


class FrameworkUnavailableError(ConvkitError):
    """A framework front end was asked for but its package is not installed."""

    stage = "load"


class UnknownFrameworkError(ConvkitError):
    """``--framework`` names no known front end, or cannot be inferred from the source."""


class ExportError(ConvkitError):
    """The framework's exporter could not convert the model."""

    stage = "capture"


class UnsupportedModelError(ConvkitError):
    """The model uses something the runtime or exporter does not support (an op, a dtype, an opset)."""

    stage = "capture"


class InternalError(Exception):
    """A bug in convkit itself. Not a ``ConvkitError``: it is shown with its traceback."""
