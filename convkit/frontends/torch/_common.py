"""Helpers the torch front end's modules share: a model's parameter order and the arguments that call it,
calling it eagerly, flattening what it returns, converting between NumPy and torch, and the first line of an
exception.

A leaf: it imports no other module of the front end, and torch only inside functions.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from convkit.errors import DataError, ExportError

if TYPE_CHECKING:
    import torch

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(value: Any) -> str:
    """The first line of ``str(value)`` (an exception, a warning's message), ANSI colours removed; the type's
    name when that is empty."""
    text = ANSI.sub("", str(value)).strip()
    return text.splitlines()[0].strip() if text else type(value).__name__


# ========================================================================================= input helpers
def user_input_specs(program: Any) -> list[Any]:
    """The user inputs among an ExportedProgram's input specs (parameters and buffers left out)."""
    from torch.export.graph_signature import InputKind

    return [spec for spec in program.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT]


def placeholder_name(spec: Any) -> str:
    """The graph placeholder's name of an ExportedProgram input spec."""
    return str(getattr(spec.arg, "name", spec.target))


def parameter_order(model: Any) -> list[str] | None:
    """Every input name ``forward`` (or the schema / program) accepts, in order."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return [placeholder_name(spec) for spec in user_input_specs(model)]
    if isinstance(model, torch.jit.ScriptModule):
        try:
            return [a.name for a in getattr(model.forward, "schema").arguments[1:]]  # noqa: B009
        except Exception:
            return None
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return [p.name for p in params if p.kind is not p.VAR_KEYWORD]


def call_arguments(model: Any, inputs: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional arguments in ``forward`` order while no parameter is skipped, keyword ones after.

    Raises:
        DataError: a name ``forward`` does not take.
    """
    order = parameter_order(model)
    tensors = {name: to_tensor(value) for name, value in inputs.items()}
    if order is None:
        return tuple(tensors.values()), {}
    unknown = [name for name in tensors if name not in order]
    if unknown:
        raise DataError(
            f"the model's forward() takes no input named {', '.join(unknown)}",
            f"it takes: {', '.join(order)}",
        )
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name in order:
        if name not in tensors:
            continue
        if kwargs or len(args) != order.index(name):
            kwargs[name] = tensors[name]
        else:
            args.append(tensors[name])
    return tuple(args), kwargs


def call_model(model: Any, inputs: Mapping[str, Any]) -> Any:
    """Call the model eagerly without gradients.

    Raises:
        DataError: the model raised on these inputs (wrong shapes or dtypes, most often).
    """
    import torch

    args, kwargs = call_arguments(model, inputs)
    target = callable_model(model)
    try:
        with torch.no_grad():
            return target(*args, **kwargs)
    except Exception as exc:
        shapes = ", ".join(f"{name} {tuple(np.shape(value))}" for name, value in inputs.items())
        raise DataError(
            f"the model raised {type(exc).__name__} on inputs {shapes}: {first_line(exc)}",
            "check the input shapes and dtypes (--input NAME:DIMS[:DTYPE]); --debug shows the traceback",
        ) from exc


def callable_model(model: Any) -> Any:
    """What to call: an ExportedProgram's module, or the model itself (an ``nn.Module`` put in eval mode)."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    if isinstance(model, torch.nn.Module) and model.training:
        model.eval()
    return model


def to_tensor(value: Any) -> torch.Tensor:
    """A tensor holding ``value`` (a NumPy array, copied; a tensor as it is)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    # NOTE: why a copy: from_numpy shares memory and warns on read-only arrays (np.load, test data).
    return torch.from_numpy(np.array(value, copy=True))


def to_numpy(value: Any) -> np.ndarray:
    """``value`` as a NumPy array (a tensor detached and moved to the CPU first)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().resolve_conj().resolve_neg().numpy()
    return np.asarray(value)


# ======================================================================================== output helpers
def flatten_outputs(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(path, leaf)`` pairs in the order torch.export flattens outputs: sequences in order, mappings
    (and ModelOutput-style dicts) by insertion order, named tuples by field; ``None`` dropped.

    Raises:
        ExportError: a leaf is no tensor, number or array.
    """
    import torch

    if value is None:
        return
    if isinstance(value, torch.Tensor | int | float | bool | np.ndarray):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from flatten_outputs(item, (*path, str(key)))
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for field_name in value._fields:
            yield from flatten_outputs(getattr(value, field_name), (*path, field_name))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from flatten_outputs(item, (*path, str(index)))
    else:
        raise ExportError(
            f"the model returns a {type(value).__name__}, which convkit cannot flatten into tensors",
            "return tensors, or tuples, lists or dicts of them",
        )
