"""The error tree: user errors (``ConvkitError``) are printed as one line, internal bugs are not.

NOTE: why two families: a user who passes a wrong path needs one sentence and exit code 2, while a bug in
convkit needs the traceback. ``InternalError`` deliberately does not inherit from ``ConvkitError`` so that
``except ConvkitError`` in the CLI can never swallow a bug.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARITY_FAILED = 1
EXIT_USAGE = 2


class ConvkitError(Exception):
    """A problem with the user's input or environment; printed without a traceback, exit code 2.

    Args:
        message: what went wrong, naming the file, input or option concerned.
        hint: what to do about it (one sentence), printed after the message.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputFileError(ConvkitError):
    """A file or folder given by the user is missing, unreadable or of the wrong kind."""


class ModelLoadError(ConvkitError):
    """A model file exists but cannot be parsed, is truncated or fails the ONNX checker."""


class UnsafeModelError(ConvkitError):
    """A model asks for something convkit refuses to do by default (external data outside its folder,
    unpickling arbitrary code)."""


class DataError(ConvkitError):
    """Input data does not fit the model: wrong names, shapes or dtypes."""


class ProviderUnavailableError(ConvkitError):
    """The requested onnxruntime execution provider is not available in this installation."""


class FrameworkUnavailableError(ConvkitError):
    """A framework front end was asked for but its package is not installed."""


class UnknownFrameworkError(ConvkitError):
    """``--framework`` names no known front end, or cannot be inferred from the source."""


class ExportError(ConvkitError):
    """The framework's exporter could not convert the model."""


class UnsupportedModelError(ConvkitError):
    """The model uses something the runtime or exporter does not support (an op, a dtype, an opset)."""


class InternalError(Exception):
    """A bug in convkit itself. Not a ``ConvkitError``: it is shown with its traceback."""
