"""Loading a PyTorch model: a factory's object, a ``.pt2`` ExportedProgram (checked by ``pt2_check`` first),
a TorchScript archive or (only with ``unsafe_pickle``) a pickled module, and ``--weights`` (a state dict or a
checkpoint wrapping one).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from convkit.errors import InputFileError, ModelLoadError, UnsafeModelError
from convkit.frontends._quiet import Quiet
from convkit.frontends.base import LoadOptions
from convkit.frontends.torch._common import first_line

MODEL_SUFFIXES = (".pt2", ".pt", ".pth", ".ts")
# keys under which training scripts commonly nest the state dict in a checkpoint
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")


def claims_path(path: Path) -> bool:
    """Whether ``path`` is a PyTorch model file: ``.pt2``, ``.pt``, ``.pth`` or ``.ts``, not a folder."""
    return path.suffix.lower() in MODEL_SUFFIXES and not path.is_dir()


def load_model(source: str, options: LoadOptions, preloaded: Any = None) -> Any:
    """Load ``source`` in eval mode: ``preloaded`` (a factory's object) when given, else the file.

    Args:
        source: the factory (``path/to/file.py:factory``) or the model file.
        options: ``weights`` to load into a factory's module, ``unsafe_pickle`` to allow pickled files.
        preloaded: the object the factory made, if ``source`` is one.

    Returns:
        An ``nn.Module``, a ``torch.jit.ScriptModule`` or a ``torch.export.ExportedProgram``.

    Raises:
        ModelLoadError: the file is corrupt, holds only weights, or ``--weights`` does not fit.
        UnsafeModelError: ``options.unsafe_pickle`` is off and the file is a pickle, or a ``.pt2``
            carrying something that could run code (see ``pt2_check``).
    """
    import torch

    if preloaded is not None:
        model = _check_model_object(preloaded, source)
    else:
        model = _load_model_file(Path(source), options.unsafe_pickle)
    if options.weights is not None:
        if isinstance(model, torch.export.ExportedProgram | torch.jit.ScriptModule):
            raise ModelLoadError(
                f"--weights applies to models built by a factory; {source} carries its own weights",
                "give the model's code as path/to/file.py:factory together with --weights",
            )
        _load_weights(model, Path(options.weights), options.unsafe_pickle)
    if isinstance(model, torch.nn.Module):
        model.eval()
    return model


def _check_model_object(obj: Any, source: str) -> Any:
    import torch

    if isinstance(obj, torch.nn.Module | torch.export.ExportedProgram):
        return obj
    raise ModelLoadError(
        f"{source} made a {type(obj).__name__}, not a torch.nn.Module",
        "point at a function or class that returns an nn.Module (or an ExportedProgram)",
    )


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives hold ``code/`` and ``constants.pkl``; ``torch.save`` archives do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_model_file(path: Path, unsafe_pickle: bool) -> Any:
    import torch

    if not path.is_file():
        raise InputFileError(
            f"model file {path} does not exist" if not path.exists() else f"{path} is not a file",
            "give a .pt2, TorchScript .pt or path/to/file.py:factory",
        )
    if path.suffix.lower() == ".pt2":
        return _load_exported_program(path, unsafe_pickle)
    if _is_torchscript_archive(path):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load TorchScript file {path}: {first_line(exc)}", "is the file complete?"
            ) from exc
    obj = _torch_load(path, unsafe_pickle, "model")
    if isinstance(obj, torch.nn.Module):
        return obj
    if _state_dict_of(obj) is not None:
        raise ModelLoadError(
            f"{path} holds only weights (a state dict), not a model",
            f"give the model's code as path/to/file.py:factory and pass this file as --weights {path}",
        )
    raise ModelLoadError(
        f"{path} holds a {type(obj).__name__}, not a torch.nn.Module",
        "save the model with torch.export.save (.pt2) or torch.jit.save, or give a factory",
    )


def _load_exported_program(path: Path, unsafe_pickle: bool) -> Any:
    """``torch.export.load``, after ``pt2_check`` found nothing in the archive that could run code (unless
    ``unsafe_pickle``)."""
    import io

    import torch

    from convkit.frontends.torch.pt2_check import UnreadableArchive, refusal

    unreadable = "is it a torch.export.save file, complete and from a compatible torch version?"
    source: Any = str(path)
    if not unsafe_pickle:
        # NOTE: why the bytes, read once: torch then loads exactly what was checked, even if the file changes
        data = path.read_bytes()
        try:
            reason = refusal(data)
        except UnreadableArchive as exc:
            raise ModelLoadError(f"cannot load {path} as an ExportedProgram: {exc}", unreadable) from exc
        if reason is not None:
            raise UnsafeModelError(
                f"{path} {reason}: torch.export.load could run code the file carries, so convkit does not "
                "load it by default",
                "if you trust the file, pass --unsafe-allow-pickle; better, save the program again with "
                "torch.export.save from a plain module",
            )
        source = io.BytesIO(data)
    try:
        with Quiet(False):
            return torch.export.load(source)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {path} as an ExportedProgram: {first_line(exc)}", unreadable
        ) from exc


def _torch_load(path: Path, unsafe_pickle: bool, what: str) -> Any:
    """``torch.load`` with ``weights_only=True``; the unrestricted unpickler only with ``unsafe_pickle``."""
    import pickle

    import torch

    if not path.is_file():
        raise InputFileError(f"{what} file {path} does not exist", "check the path")
    corrupt = f"cannot read {path}: it is corrupt or truncated"
    try:
        with Quiet(False):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _needs_full_unpickler(path, exc):
            raise ModelLoadError(f"{corrupt} ({first_line(exc)})") from exc
        if not unsafe_pickle:
            raise UnsafeModelError(
                f"{path} is a pickled Python object (as torch.save(model) writes): unpickling it runs "
                "whatever code the file names, so convkit does not do it by default",
                "if you trust the file, pass --unsafe-allow-pickle; better, save a state dict and give it "
                "with --weights and a factory, or save the model with torch.export.save (.pt2)",
            ) from exc
        original = exc
    except Exception as exc:
        raise ModelLoadError(f"{corrupt} ({first_line(exc)})") from exc
    # NOTE: why only here: the user said --unsafe-allow-pickle, i.e. they trust this file's code.
    try:
        with Quiet(False):
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot unpickle {path}: {type(exc).__name__}: {first_line(exc)}",
            "the classes it was saved with must be importable (run from the training code's folder)",
        ) from original


def _needs_full_unpickler(path: Path, exc: Exception) -> bool:
    """Whether ``weights_only`` refused a readable pickle (it names a class or function to import), as
    opposed to failing on bytes that are no pickle at all.

    NOTE: why the header too: a plain ``pickle.dump`` (protocol 4, a FRAME opcode) fails with "Unsupported
    operand" before any global is seen, like random bytes do; its 0x80 0x02..0x05 header tells them apart.
    """
    if "unsupported global" in str(exc).lower():
        return True
    if zipfile.is_zipfile(path):
        return "weights only load failed" in str(exc).lower()
    with path.open("rb") as stream:
        header = stream.read(2)
    return len(header) == 2 and header[0] == 0x80 and 2 <= header[1] <= 5


def _state_dict_of(obj: Any) -> dict[str, Any] | None:
    """The tensors of a state dict, unwrapping ``{"state_dict": ...}``-style checkpoints; else ``None``."""
    import torch

    if not isinstance(obj, Mapping):
        return None
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return dict(obj)
    for key in _CHECKPOINT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, torch.nn.Module):
            return dict(inner.state_dict())
        found = _state_dict_of(inner)
        if found is not None:
            return found
    return None


def _load_weights(model: Any, path: Path, unsafe_pickle: bool) -> None:
    import torch

    obj = _torch_load(path, unsafe_pickle, "--weights")
    state = dict(obj.state_dict()) if isinstance(obj, torch.nn.Module) else _state_dict_of(obj)
    if state is None:
        keys = f" (keys: {', '.join(map(str, list(obj)[:8]))})" if isinstance(obj, Mapping) else ""
        raise ModelLoadError(
            f"--weights {path} holds a {type(obj).__name__}{keys}, not a state dict of tensors",
            "save it with torch.save(model.state_dict(), path)",
        )
    expected = model.state_dict()
    # NOTE: why: checkpoints saved from DataParallel / DistributedDataParallel prefix every key "module.".
    if all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in expected):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{len(found)} {label}: {', '.join(found[:6])}{', ...' if len(found) > 6 else ''}"
            for label, found in (
                ("missing key(s)", missing),
                ("unexpected key(s)", unexpected),
                ("shape mismatch(es) (checkpoint vs model)", mismatched),
            )
            if found
        ]
        raise ModelLoadError(
            f"--weights {path} does not fit {type(model).__name__}: {'; '.join(problems)}",
            "is the checkpoint from this architecture (and this factory's configuration)?",
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelLoadError(f"loading --weights {path} failed: {first_line(exc)}") from exc
