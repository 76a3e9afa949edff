"""The worker side of the protocol, standard library only, and the entry point of every worker process:
``<env>/bin/python protocol.py <framework>/env/worker.py REQUEST.json``. It runs in a framework's own
environment, where convkit itself is not installed: it loads the worker file beside it by path, registered
as the module ``convkit_worker_protocol`` so that the worker imports its helpers under that name, and answers
the request with the worker's ``HANDLERS`` (request kind -> function).

A request is one JSON file named on the command line: ``{"kind": "export", ...}``. The worker answers on its
standard output with JSON lines only:

- ``{"progress": {...}}``, any number of them (training epochs);
- then exactly one of ``{"result": {...}}`` (exit 0) or ``{"error": "...", "hint": "...", "type": "..."}``
  (exit 2). ``type`` names the kind of user error (``source``, ``load``, ``data``, ``export``, ``unsafe``,
  ``input``) so that the core raises the matching ``ConvkitError``.

Everything else the process prints, the framework's C++ logging included, goes to standard error, which the
core shows only with ``--verbose`` or when the worker crashes. Arrays travel in ``.npz`` files written with
``np.savez`` and read with ``np.load(allow_pickle=False)``; nothing is ever pickled.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

EXIT_OK = 0
EXIT_ERROR = 2
MODULE_NAME = "convkit_worker_protocol"
WORKER_DIR = Path(__file__).resolve().parent
"""The folder of the worker script being served (set by ``serve``): ``load_sibling`` loads from there."""


class WorkerFailure(Exception):
    """A user-facing failure inside the worker: one line, a hint, and the kind of error it is."""

    def __init__(self, message: str, hint: str | None = None, kind: str = "worker") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.kind = kind


class Channel:
    """The protocol stream: the worker's original standard output, one JSON object per line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def send(self, message: Mapping[str, Any]) -> None:
        self._stream.write(json.dumps(message) + "\n")
        self._stream.flush()

    def progress(self, **fields: Any) -> None:
        """Report progress (``epoch``, ``epochs``, ``metrics`` ...); the core turns it into a callback."""
        self.send({"progress": fields})


def _take_stdout() -> Channel:
    """Keep the real standard output for the protocol and send file descriptor 1 to standard error.

    NOTE: why at the descriptor level: frameworks print from C++ (paddle2onnx's ``[Paddle2ONNX] ...``) and
    through handlers bound to ``sys.stdout`` at import; a Python-level redirect would let those lines into
    the protocol stream.
    """
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    return Channel(os.fdopen(protocol_fd, "w", buffering=1, encoding="utf-8"))


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def serve() -> NoReturn:
    """Load the worker file named in ``sys.argv[1]``, answer the request named in ``sys.argv[2]`` with the
    worker's handler for its ``kind``, then exit.

    A ``WorkerFailure`` becomes an error line and exit 2; any other exception too, its traceback written to
    standard error. ``SystemExit`` raised by a library (paddle2onnx exits on errors) counts as an exception.
    The worker is imported after standard output is taken, so that what its framework prints at import
    stays out of the protocol stream.
    """
    channel = _take_stdout()
    try:
        if len(sys.argv) != 3:
            raise WorkerFailure("usage: protocol.py WORKER.py REQUEST.json", kind="internal")
        global WORKER_DIR
        script = Path(sys.argv[1]).resolve()
        WORKER_DIR = script.parent
        handlers: Mapping[str, Callable[[dict[str, Any], Channel], dict[str, Any]]]
        handlers = load_sibling(script.stem).HANDLERS
        with open(sys.argv[2], encoding="utf-8") as handle:
            request = json.load(handle)
        kind = request.get("kind")
        handler = handlers.get(kind)
        if handler is None:
            raise WorkerFailure(
                f"unknown request kind {kind!r}; known: {', '.join(handlers)}", kind="internal"
            )
        result = handler(request, channel)
    except WorkerFailure as failure:
        channel.send({"error": failure.message, "hint": failure.hint, "type": failure.kind})
        _exit(EXIT_ERROR)
    except (Exception, SystemExit) as exc:
        traceback.print_exc()
        channel.send({"error": first_line(exc), "hint": None, "type": "worker"})
        _exit(EXIT_ERROR)
    channel.send({"result": result})
    _exit(EXIT_OK)


def load_sibling(name: str) -> Any:
    """The module ``<name>.py`` beside the worker script, loaded by path once
    (as ``convkit_worker_<name>``)."""
    module_name = f"convkit_worker_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, WORKER_DIR / f"{name}.py")
        if spec is None or spec.loader is None:
            raise WorkerFailure(f"cannot load {WORKER_DIR / name}.py", kind="internal")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def _exit(code: int) -> NoReturn:
    """Leave without running the framework's atexit handlers and destructors.

    NOTE: why: the answer is already written; some frameworks crash while tearing down their thread pools,
    which would turn a finished request into a signal.
    """
    sys.stderr.flush()
    os._exit(code)


def load_arrays(path: str) -> dict[str, Any]:
    """The named arrays of an ``.npz`` file, read without unpickling anything."""
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def save_arrays(path: str, arrays: Mapping[str, Any]) -> None:
    """Write named arrays as an ``.npz`` file (the core reads them with ``allow_pickle=False``)."""
    import numpy as np

    named: dict[str, Any] = {name: np.asarray(value) for name, value in arrays.items()}
    np.savez(path, **named)


def save_outputs(path: str, outputs: list[Any]) -> None:
    """Write a model's outputs in order, as ``output_0``, ``output_1`` ... (what the core reads back)."""
    save_arrays(path, {f"output_{k}": value for k, value in enumerate(outputs)})


def ordered_names(model_names: list[str] | None, names: list[str], what: str) -> list[str]:
    """``names`` in the model's call order (``model_names``; ``None`` when the model does not say).

    Raises:
        WorkerFailure: the names differ from the model's (kind ``data``), naming both sets.
    """
    if model_names is None:
        return names
    if sorted(names) != sorted(model_names):
        raise WorkerFailure(
            f"the model's inputs are {', '.join(model_names) or 'none'}, not {', '.join(names) or 'none'} "
            f"({what})",
            "name the inputs after the model's: --input NAME:DIMS",
            "data",
        )
    return list(model_names)


def check_weights_fit(
    file: Path | str,
    own: Mapping[str, tuple[int, ...] | None],
    given: Mapping[str, tuple[int, ...]],
    hint: str | None,
    fits: Callable[[tuple[int, ...], tuple[int, ...]], bool] | None = None,
    wrong_dtypes: Sequence[str] = (),
) -> None:
    """Check that weights read from ``file`` fit a model, naming every key that does not.

    Args:
        file: where the weights came from (for the message).
        own: the model's parameter shapes by key (``None``: not known yet, any shape goes).
        given: the file's shapes by the same keys.
        hint: how to write weights that fit.
        fits: whether a given shape fits an own one (default: equal).
        wrong_dtypes: ``"name float64 (want float32)"`` entries found by the caller.

    Raises:
        WorkerFailure: missing, unexpected or misshapen keys (kind ``load``), all of them in one line.
    """
    same = fits or (lambda shape, want: shape == want)
    wrong = [
        f"{k} {list(shape)} (want {list(want)})"
        for k, shape in given.items()
        if (want := own.get(k)) is not None and not same(tuple(shape), tuple(want))
    ]
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    details = "; ".join(
        text
        for text in (
            f"missing {', '.join(missing[:8])}" if missing else "",
            f"unexpected {', '.join(unexpected[:8])}" if unexpected else "",
            f"wrong shape {', '.join(wrong[:8])}" if wrong else "",
            f"wrong dtype {', '.join(wrong_dtypes[:8])}" if wrong_dtypes else "",
        )
        if text
    )
    if details:
        raise WorkerFailure(f"the weights in {file} do not fit the model: {details}", hint, "load")


def train_reference_cnn(
    request: Mapping[str, Any],
    channel: Channel,
    train: Callable[..., Mapping[str, Any]],
) -> dict[str, Any]:
    """The ``train_reference_cnn`` request: ``data`` (.npz: x_train, y_train, x_test, y_test), ``epochs``,
    ``seed`` -> ``weights`` (canonical .npz), trained by ``train(data, epochs, seed, progress)`` (a reference
    module's); sends ``{"progress": {"epoch", "epochs", "metrics"}}`` after each epoch."""
    data = load_arrays(request["data"])

    def report(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        channel.progress(epoch=epoch, epochs=epochs, metrics=metrics)

    weights = train(
        (data["x_train"], data["y_train"], data["x_test"], data["y_test"]),
        int(request["epochs"]),
        int(request["seed"]),
        report,
    )
    save_arrays(request["weights"], weights)
    return {"epochs": int(request["epochs"])}


def call_factory(source: str) -> Any:
    """Import ``file.py:factory`` or ``pkg.module:factory`` and call it (a class is instantiated), as
    ``convkit.core.sources.load_factory`` does in the core; other objects are returned as they are."""
    module_text, _, attr = source.rpartition(":")
    if module_text.endswith(".py"):
        path = Path(module_text)
        if not path.is_file():
            raise WorkerFailure(
                f"source file {path} does not exist", "check the path before the ':'", "input"
            )
        name = f"convkit_source_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise WorkerFailure(f"cannot import {path}", kind="source")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise WorkerFailure(f"importing {path} failed: {first_line(exc)}", kind="source") from exc
        finally:
            sys.path.remove(str(path.parent))
    else:
        try:
            module = importlib.import_module(module_text)
        except ImportError as exc:
            raise WorkerFailure(
                f"cannot import module {module_text!r}: {first_line(exc)}",
                "is it installed, or on PYTHONPATH? A file needs its .py suffix: path/to/file.py:factory",
                "source",
            ) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            available = ", ".join(sorted(n for n in dir(module) if not n.startswith("_"))[:20])
            raise WorkerFailure(
                f"{module_text} has no attribute {attr!r}", f"it defines: {available}", "source"
            )
        target = getattr(target, part)
    if not (inspect.isclass(target) or inspect.isfunction(target) or inspect.ismethod(target)):
        return target
    try:
        return target()
    except Exception as exc:
        raise WorkerFailure(f"calling {source} failed: {first_line(exc)}", kind="source") from exc


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this worker when the convkit that started it dies, however it dies.

    NOTE: why here and not with ``preexec_fn``: that runs between fork and exec in a process that may hold
    framework threads, which can deadlock; the worker is single-threaded when it starts. A parent gone
    before the request is set up is caught by comparing the parent's id.
    """
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(EXIT_ERROR)


if __name__ == "__main__":
    _die_with_parent(int(os.environ.get("CONVKIT_PARENT_PID", os.getppid())))
    # NOTE: why: running a script puts its folder first on sys.path; a user's factory importing a module
    # named like one of ours (client, protocol) must find its own, so the folder goes and ours load by path.
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    sys.modules[MODULE_NAME] = sys.modules[__name__]
    serve()
