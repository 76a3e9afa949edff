"""A PyTorch model's inputs: the names ``forward`` (or a TorchScript schema, or an ExportedProgram) takes,
the shapes an ExportedProgram recorded, and the check of the user's names against them.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from convkit.core.inputs import InputSpec
from convkit.errors import DataError
from convkit.frontends.torch._common import placeholder_name, user_input_specs

_INPUT_DTYPES = {"float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool"}


def input_names(model: Any) -> list[str] | None:
    """``forward``'s required parameters (or the ExportedProgram's / TorchScript schema's inputs)."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return [placeholder_name(spec) for spec in user_input_specs(model)]
    if isinstance(model, torch.jit.ScriptModule):
        return _script_input_names(model)
    return _forward_input_names(model)


def input_specs(model: Any) -> list[InputSpec] | None:
    """Shapes an ExportedProgram recorded (its symbolic dims stay symbolic); ``None`` for modules."""
    import torch

    if not isinstance(model, torch.export.ExportedProgram):
        return None
    symbols: dict[str, str] = {}
    specs = []
    for spec in user_input_specs(model):
        name = placeholder_name(spec)
        value = _placeholder_value(model, name)
        if value is None or not isinstance(value, torch.Tensor):
            return None
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype not in _INPUT_DTYPES:
            return None
        dims: list[int | str] = []
        for axis, size in enumerate(value.shape):
            if isinstance(size, int):
                dims.append(size)
                continue
            key = str(size)
            if key not in symbols:
                # NOTE: why rename: torch.export calls dims s0, s77 ...; the batch is the usual meaning of
                # a symbolic leading dim, and a stable name reads better in the ONNX file and reports.
                wanted = "batch" if axis == 0 and "batch" not in symbols.values() else f"{name}_dim{axis}"
                symbols[key] = re.sub(r"\W", "_", wanted)
            dims.append(symbols[key])
        specs.append(InputSpec(name, dims, dtype))
    return specs


def check_spec_names(model: Any, given: list[str]) -> None:
    """Check the names of the inputs given against the model's :func:`input_names`.

    Raises:
        DataError: the names do not match (given ones may add optional inputs to the required ones).
    """
    known = input_names(model)
    if known is not None and sorted(known) != sorted(given) and not set(known) <= set(given):
        raise DataError(
            f"input names {', '.join(given)} do not match the model's inputs",
            f"expected: {', '.join(known)}",
        )


def _forward_input_names(model: Any) -> list[str] | None:
    """Required parameters of ``forward``; ``None`` when it has none (all optional, or ``*args``).

    NOTE: why required ones only: the core checks given names against these exactly, and optional inputs
    (masks, flags) are usually left at their defaults. With ``None`` the core takes the user's names as
    they are, which lets a model whose inputs are all optional (``input_ids=None, ...``) be fed any subset;
    ``call_arguments`` still orders them and rejects names ``forward`` does not take.
    """
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError, AttributeError):
        return None
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    required = [
        p.name
        for p in params
        if p.kind is not inspect.Parameter.VAR_KEYWORD and p.default is inspect.Parameter.empty
    ]
    return required or None


def _script_input_names(model: Any) -> list[str] | None:
    try:
        arguments = model.forward.schema.arguments[1:]
    except Exception:
        return None
    return [a.name for a in arguments if not a.has_default_value()] or None


def _placeholder_value(program: Any, name: str) -> Any:
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == name:
            return node.meta.get("val")
    return None
