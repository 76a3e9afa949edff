"""Model sources given as ``path/to/file.py:factory`` or ``package.module:factory``; framework inference."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from convkit.errors import ConvkitError, InputFileError

_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class SourceError(ConvkitError):
    """A ``module:factory`` source cannot be imported or called."""


def is_factory_source(source: str) -> bool:
    """True for ``file.py:name`` and ``pkg.module:name`` (not for a plain existing path)."""
    if ":" not in source or Path(source).exists():
        return False
    module, _, attr = source.rpartition(":")
    if not _ATTR_RE.match(attr):
        return False
    return module.endswith(".py") or bool(_MODULE_RE.match(module))


def load_factory(source: str) -> Any:
    """Import ``module:factory`` and return what it makes: a class is instantiated and a function called,
    both without arguments; any other object is returned as it is.

    NOTE: why this runs the user's code: a factory *is* code the user points at; it is not data from
    elsewhere. Loading pickled models is a different matter, off by default in each front end.
    """
    module_text, _, attr = source.rpartition(":")
    if module_text.endswith(".py"):
        path = Path(module_text)
        if not path.is_file():
            raise InputFileError(f"source file {path} does not exist", "check the path before the ':'")
        module_name = f"convkit_source_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise SourceError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        # NOTE: why: a model file often imports its siblings (``from layers import Block``).
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            spec.loader.exec_module(module)
        except (ConvkitError, KeyboardInterrupt):
            raise
        except BaseException as exc:
            raise _user_code_failed(f"importing {path}", exc) from exc
        finally:
            sys.path.remove(str(path.parent.resolve()))
    else:
        try:
            module = importlib.import_module(module_text)
        except ImportError as exc:
            raise SourceError(
                f"cannot import module {module_text!r}: {exc}",
                "is it installed, or on PYTHONPATH? A file needs its .py suffix: path/to/file.py:factory",
            ) from exc
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise _user_code_failed(f"importing {module_text}", exc) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            available = sorted(n for n in dir(module) if not n.startswith("_"))[:20]
            raise SourceError(
                f"{module_text} has no attribute {attr!r}", f"it defines: {', '.join(available)}"
            )
        target = getattr(target, part)
    if inspect.isclass(target) or inspect.isfunction(target) or inspect.ismethod(target):
        try:
            inspect.signature(target).bind()
        except TypeError as exc:
            raise SourceError(
                f"{source} could not be called without arguments: {exc}",
                "point at a factory function or class that takes no arguments",
            ) from exc
        except ValueError:
            pass  # no signature to read (a builtin): calling it tells
        try:
            made = target()
        except (ConvkitError, KeyboardInterrupt):
            raise
        except BaseException as exc:
            raise _user_code_failed(f"your factory {source}", exc) from exc
        if made is None:
            raise SourceError(
                f"your factory {source} returned None", "return the model (an object of your framework)"
            )
        return made
    return target


def _user_code_failed(what: str, exc: BaseException) -> SourceError:
    """The error for the user's own code failing: what raised, the first line of why, and where in the
    user's code (the innermost frame outside convkit and the libraries).

    NOTE: why a user error: the user's factory or module failing (a config error, ``sys.exit(3)``, a
    RecursionError) is theirs to fix, not a bug in convkit; exit 2, the traceback with ``--debug``.
    """
    if isinstance(exc, SystemExit):
        return SourceError(
            f"{what} exited (sys.exit({exc.code!r})) instead of returning a model",
            "a factory must return the model; --debug shows where it exited",
        )
    return SourceError(
        f"{what} raised {exception_summary(exc)}{user_code_location(exc)}",
        "fix it there; --debug shows the traceback",
    )


def exception_summary(exc: BaseException) -> str:
    """``Type: message`` on one line: the message's first line, and the lines after it while that one
    ends in a colon.

    NOTE: why more than the first line: wrapping exceptions put the reason on the next line (transformers'
    config validation: ``Class validation error for validator 'validate_architecture':`` then ``ValueError:
    The hidden size (30) is not a multiple of the number of attention heads (4).``).
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    for line in lines[1:]:
        if not text.endswith(":"):
            break
        text = f"{text} {line}"
    return f"{type(exc).__name__}: {text}"


def user_code_location(exc: BaseException) -> str:
    """`` (file.py:12)``: the innermost frame of the traceback in the user's code, when there is one."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    import sysconfig

    library = (
        "site-packages",
        "dist-packages",
        "<frozen ",
        str(Path(__file__).parents[1]),
        sysconfig.get_paths()["stdlib"],
    )
    mine = [frame for frame in frames if not any(part in frame.filename for part in library)]
    if not mine:
        return ""
    frame = mine[-1]
    return f" ({Path(frame.filename).name}:{frame.lineno})"
