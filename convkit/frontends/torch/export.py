"""Exporting a PyTorch model to ONNX: the torch.export-based exporter first, the TorchScript one when it
cannot capture the model (or when asked for), their error messages and notes, and the conform pass the
written file goes through (``convkit.graph.conform``).
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.inputs import InputSpec
from convkit.errors import ExportError
from convkit.frontends._quiet import Quiet
from convkit.frontends.base import ExportOptions, ExportResult
from convkit.frontends.torch._common import (
    ANSI,
    call_arguments,
    call_model,
    first_line,
    flatten_outputs,
    parameter_order,
    to_tensor,
)
from convkit.frontends.torch.inputs import check_spec_names
from convkit.graph.names import output_names

_EXPORTERS = ("dynamo", "torchscript")
_EXPORTER_ALIASES = {
    "torch.export": "dynamo",
    "export": "dynamo",
    "jit": "torchscript",
    "legacy": "torchscript",
}


def export_model(
    model: Any,
    specs: Sequence[InputSpec],
    example: Mapping[str, np.ndarray],
    path: Path,
    options: ExportOptions,
) -> ExportResult:
    """Export ``model`` to one ONNX file at ``path``; see :meth:`TorchFrontend.export`.

    Args:
        model: an ``nn.Module``, a ``torch.jit.ScriptModule`` or a ``torch.export.ExportedProgram``.
        specs: the inputs (string dims dynamic), in the names the model takes.
        example: example inputs by name, to trace and name the outputs with.
        path: the ONNX file to write.
        options: ``exporter`` (``dynamo``, ``torchscript`` or an alias; ``None`` or ``auto`` for both in
            turn), ``opset`` and ``verbose``.

    Returns:
        The exporter that wrote the file, the file's opset and notes (the fallback's reason, warnings).

    Raises:
        ExportError: the exporter(s) failed, or a dimension meant to be dynamic is fixed by the model.
    """
    import torch

    choice = _exporter_choice(options.exporter)
    path = Path(path)
    names = [spec.name for spec in specs]
    check_spec_names(model, names)
    tensors = {spec.name: to_tensor(example[spec.name]) for spec in specs}
    with Quiet(options.verbose):
        output_names = _output_names(model, tensors, names)
    is_script = isinstance(model, torch.jit.ScriptModule)
    is_program = isinstance(model, torch.export.ExportedProgram)
    if is_script and choice == "dynamo":
        raise ExportError(
            "a TorchScript model cannot go through torch.export", "use --exporter torchscript or omit it"
        )
    if is_program and choice == "torchscript":
        raise ExportError(
            "an ExportedProgram (.pt2) cannot go through the TorchScript exporter",
            "use --exporter dynamo or omit it",
        )
    notes: list[str] = []
    if not is_script and choice in (None, "dynamo"):
        try:
            exported = _export_dynamo(model, specs, tensors, output_names, path, options)
        except _ExporterFailed as failure:
            if choice == "dynamo" or is_program:
                raise ExportError(
                    f"the torch.export-based exporter failed at {failure.stage}: {failure.summary}",
                    "fix that construct (https://pytorch.org/docs/stable/export.html)"
                    + ("" if is_program else ", or try --exporter torchscript")
                    + "; --verbose shows the exporter's own output",
                ) from failure.__cause__
            what = (
                "torch.export could not capture the model"
                if failure.stage.startswith("capture")
                else f"the torch.export-based exporter failed at {failure.stage}"
            )
            notes.append(
                f"{what} ({failure.summary}); exported with the TorchScript exporter (dynamo=False) instead"
            )
        else:
            opset = _finish_file(path, specs, "torch.export", from_program=is_program)
            return ExportResult("dynamo", opset, notes + exported)
    notes.extend(_export_torchscript(model, specs, tensors, output_names, path, options))
    opset = _finish_file(path, specs, "the TorchScript exporter", from_program=False)
    return ExportResult("torchscript", opset, notes)


def _input_order(model: Any, names: Sequence[str]) -> list[str]:
    """``names`` in the order ``call_arguments`` passes them (the order of the exported graph's inputs)."""
    order = parameter_order(model)
    return list(names) if order is None else [name for name in order if name in names]


def _output_names(model: Any, tensors: Mapping[str, Any], input_names: Sequence[str]) -> list[str]:
    """``output`` for one output, ``output_N`` for a sequence, the keys (``logits``) for a dict."""
    outputs = call_model(model, tensors)
    paths = [path for path, _ in flatten_outputs(outputs)]
    return output_names(paths, isinstance(outputs, Mapping), input_names)


class _ExporterFailed(Exception):
    """An exporter failed; ``stage`` says where, ``summary`` is one line for notes and errors."""

    def __init__(self, stage: str, summary: str) -> None:
        super().__init__(f"{stage}: {summary}")
        self.stage = stage
        self.summary = summary


def _exporter_choice(exporter: str | None) -> str | None:
    if exporter is None or exporter.strip().lower() in ("", "auto"):
        return None
    key = exporter.strip().lower()
    key = _EXPORTER_ALIASES.get(key, key)
    if key not in _EXPORTERS:
        raise ExportError(
            f"unknown exporter {exporter!r} for torch",
            "choose dynamo (torch.export-based, the default) or torchscript (the legacy exporter)",
        )
    return key


def _dynamic_shapes(model: Any, specs: Sequence[InputSpec]) -> dict[str, Any] | tuple[Any, ...] | None:
    """``{input: {axis: Dim(symbol)}}``; one ``Dim`` per symbol, so inputs that share one stay equal.

    A ``forward(*args)`` gets a tuple in argument order instead: there are no parameter names to key by.
    """
    import torch

    dims: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    for spec in specs:
        axes = {}
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, str):
                axes[axis] = dims.setdefault(dim, torch.export.Dim(dim))
        shapes[spec.name] = axes or None
    if not any(shapes.values()):
        return None
    if parameter_order(model) is None:
        return _star_args_shapes(model, list(shapes.values()))
    return shapes


def _star_args_shapes(model: Any, shapes: list[Any]) -> dict[str, Any] | tuple[Any, ...]:
    """``forward(x, *rest)``: the leading parameters by name, the rest as one tuple under ``rest``."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return tuple(shapes)
    keyed: dict[str, Any] = {}
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            keyed[param.name] = tuple(shapes)
            return keyed
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            keyed[param.name] = shapes.pop(0) if shapes else None
    return tuple(shapes)


def _export_dynamo(
    model: Any,
    specs: Sequence[InputSpec],
    tensors: Mapping[str, Any],
    output_names: list[str],
    path: Path,
    options: ExportOptions,
) -> list[str]:
    """Run ``torch.onnx.export(dynamo=True)``; returns notes. Raises ``_ExporterFailed``."""
    import torch

    from convkit.graph.conform import EXTERNAL_DATA_THRESHOLD

    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise _ExporterFailed(
            "setup", f"onnxscript is not installed ({exc}); pip install 'convkit[torch]'"
        ) from exc
    args, kwargs = call_arguments(model, tensors)
    is_program = isinstance(model, torch.export.ExportedProgram)
    ordered = _input_order(model, [spec.name for spec in specs])
    with Quiet(options.verbose) as quiet:
        try:
            program = torch.onnx.export(
                model,
                args,
                kwargs=kwargs or None,
                dynamo=True,
                # NOTE: why False rather than None: None prints "[torch.onnx] Obtain model graph ..." lines
                verbose=bool(options.verbose),
                input_names=ordered,
                output_names=output_names,
                opset_version=options.opset,
                dynamic_shapes=None if is_program else _dynamic_shapes(model, specs),
                optimize=True,
            )
        except Exception as exc:
            raise _dynamo_failure(exc) from exc
        if program is None:
            raise _ExporterFailed("export", "torch.onnx.export returned no ONNX program")
        try:
            external = _initializer_bytes(program) > EXTERNAL_DATA_THRESHOLD
            program.save(str(path), external_data=external)
        except Exception as exc:
            raise _ExporterFailed("saving the ONNX file", first_line(exc)) from exc
    notes = _warning_notes(quiet.warnings)
    if external:
        notes.append(f"weights exceed 2 GB: written as external data beside {path.name}")
    return notes


def _dynamo_failure(exc: Exception) -> _ExporterFailed:
    """One line naming the failing construct, from the exporter's multi-page message.

    NOTE: why parse text: torch.onnx raises its private ``TorchExportError`` (capture) and ``ConversionError``
    (translation) with the original exception as ``__cause__`` and the user's line in the message; there is
    no public structured form.
    """
    text = ANSI.sub("", str(exc))
    kind = type(exc).__name__
    stage = {
        "TorchExportError": "capture (torch.export)",
        "ConversionError": "translation to ONNX",
        "DispatchError": "translation to ONNX",
        "GraphConstructionError": "translation to ONNX",
    }.get(kind, "export")
    cause = exc.__cause__
    if cause is not None:
        summary = f"{type(cause).__name__}: {first_line(cause)}"
    else:
        match = re.search(r"## Exception summary\s+<class '[\w.]*?(\w+)'>: (.+)", text)
        summary = f"{match.group(1)}: {match.group(2).strip()}" if match else f"{kind}: {first_line(text)}"
    where = re.search(
        r'The following call raised this error:\s+File "([^"]+)", line (\d+), in \w+\s+(.+)', text
    )
    if where:
        summary += f" at {Path(where.group(1)).name}:{where.group(2)} `{where.group(3).strip()}`"
    return _ExporterFailed(stage, summary)


def _export_torchscript(
    model: Any,
    specs: Sequence[InputSpec],
    tensors: Mapping[str, Any],
    output_names: list[str],
    path: Path,
    options: ExportOptions,
) -> list[str]:
    """Run ``torch.onnx.export(dynamo=False)`` with ``dynamic_axes``; returns notes (tracer warnings)."""
    import torch

    args, kwargs = call_arguments(model, tensors)
    if kwargs:
        # NOTE: why: the TorchScript exporter passes a trailing dict as keyword arguments
        args = (*args, kwargs)
    ordered = _input_order(model, [spec.name for spec in specs])
    dynamic_axes = {
        spec.name: {axis: dim for axis, dim in enumerate(spec.dims) if isinstance(dim, str)} for spec in specs
    }
    dynamic_axes = {name: axes for name, axes in dynamic_axes.items() if axes}
    with Quiet(options.verbose) as quiet:
        try:
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                input_names=ordered,
                output_names=output_names,
                dynamic_axes=dynamic_axes or None,
                opset_version=options.opset,
            )
        except Exception as exc:
            raise ExportError(
                f"the TorchScript exporter failed: {type(exc).__name__}: {first_line(exc)}",
                "--verbose shows the exporter's own output",
            ) from exc
    return _warning_notes(quiet.warnings)


def _warning_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """Tracer warnings matter (the trace may not generalise); the rest is exporter chatter."""
    notes: list[str] = []
    for item in caught:
        category = item.category.__name__
        if category != "TracerWarning":
            continue
        text = first_line(item.message)
        note = (
            f"the TorchScript tracer warned at {Path(item.filename).name}:{item.lineno}: {text} "
            "(the exported graph follows the path the example inputs took)"
        )
        if note not in notes:
            notes.append(note)
    return notes


def _initializer_bytes(program: Any) -> int:
    try:
        return sum(
            int(value.const_value.nbytes)
            for value in program.model.graph.initializers.values()
            if value.const_value is not None
        )
    except Exception:
        return 0


def _finish_file(path: Path, specs: Sequence[InputSpec], exporter: str, from_program: bool) -> int:
    """Conform the written file to ``specs`` (``convkit.graph.conform``); returns the file's opset.

    NOTE: why read without external data: the proto keeps its references to the data file torch wrote
    beside it, and nothing here reads a weight.
    """
    import onnx

    from convkit.graph.conform import FixedDimMessage, conform, save
    from convkit.graph.model import default_domain_opset

    model = onnx.load(str(path), load_external_data=False)
    if from_program:
        fixed = FixedDimMessage(
            "the .pt2 was exported with that size fixed", "re-export the .pt2 with dynamic_shapes"
        )
    else:
        fixed = FixedDimMessage(
            "the model does not work for other sizes as written", "make the model size-generic"
        )
    conform(model, specs, exporter=exporter, fixed_dim=fixed)
    save(model, path)
    return default_domain_opset(model)
