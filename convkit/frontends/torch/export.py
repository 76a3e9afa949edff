"""Exporting a PyTorch model to ONNX: the dims settled first (``inputs.settle_dims``), the torch.export-based
exporter, the TorchScript one when it cannot capture the model (or when asked for), their error messages and
notes, output dims the exporter pinned made symbolic again, and the conform pass the written file goes
through (``convkit.graph.conform``).
"""

from __future__ import annotations

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
    to_tensor,
)
from convkit.frontends.torch.inputs import (
    Bounds,
    check_spec_names,
    dynamic_shapes,
    fresh_rnn_dispatch,
    input_order,
    settle_dims,
    traceable,
)
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
        specs: the inputs (string dims dynamic; ``dynamic_if_allowed`` axes dynamic where torch.export finds
            the model allows it, see ``inputs.settle_dims``), in the names the model takes.
        example: example inputs by name, to trace and name the outputs with.
        path: the ONNX file to write.
        options: ``exporter`` (``dynamo``, ``torchscript`` or an alias; ``None`` or ``auto`` for both in
            turn), ``opset`` and ``verbose``.

    Returns:
        The exporter that wrote the file, the file's opset and notes (the axes kept static and why, the
        fallback's reason, warnings).

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
    specs, bounds, notes = settle_dims(model, specs, tensors, options.verbose)
    tensors = traceable(specs, tensors)
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
    if not is_script and choice in (None, "dynamo"):
        try:
            exported = _export_dynamo(model, specs, bounds, tensors, output_names, path, options)
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


def _export_dynamo(
    model: Any,
    specs: Sequence[InputSpec],
    bounds: Bounds,
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
    ordered = input_order(model, [spec.name for spec in specs])
    with Quiet(options.verbose) as quiet, fresh_rnn_dispatch():
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
                dynamic_shapes=None if is_program else dynamic_shapes(model, specs, bounds=bounds),
                optimize=True,
            )
        except Exception as exc:
            raise _dynamo_failure(exc) from exc
        if program is None:
            raise _ExporterFailed("export", "torch.onnx.export returned no ONNX program")
        try:
            external = _initializer_bytes(program) > EXTERNAL_DATA_THRESHOLD
            # NOTE: why external data even for small models: onnx_ir then writes tensor by tensor from
            # the module's own memory, where an inline file is serialized whole (two copies of the
            # weights); _finish_file streams them back into the model file when they fit in one
            program.save(str(path), external_data=True)
        except Exception as exc:
            raise _ExporterFailed("saving the ONNX file", first_line(exc)) from exc
        finally:
            _forget_matched_graphs()
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
    ordered = input_order(model, [spec.name for spec in specs])
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


def _forget_matched_graphs() -> None:
    """Make onnxscript's rewrite rules let go of the last graph they matched.

    NOTE: why: the rules are module-level objects whose matcher keeps the graph, node and match it last saw
    (``SimplePatternMatcher._graph`` and ``_match``, onnxscript 0.7) after the export returns, and with the
    graph every weight of the exported model: BERT-base's 0.4 GB stayed in memory while onnxruntime loaded
    the export.
    """
    import sys

    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:
        return
    for name, module in list(sys.modules.items()):
        if not name.startswith(("onnxscript.", "torch.onnx.")):
            continue
        for value in list(vars(module).values()):
            rules = value if isinstance(value, list | tuple) else getattr(value, "rules", [value])
            for rule in rules if isinstance(rules, list | tuple) else []:
                matcher = getattr(rule, "_matcher", None)
                if isinstance(matcher, SimplePatternMatcher):
                    for attribute in ("_graph", "_current_node", "_tracer"):
                        setattr(matcher, attribute, None)
                    if hasattr(matcher, "_match"):
                        matcher._match = type(matcher._match)()


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
    """Conform the written file to ``specs`` (``convkit.graph.conform``) and write the weights into it when
    they fit in one file; returns the file's opset.

    NOTE: why read without external data: the proto keeps its references to the data file torch wrote
    beside it, and nothing here reads a weight.
    """
    import onnx

    from convkit.graph.conform import EXTERNAL_DATA_THRESHOLD, FixedDimMessage, conform, save
    from convkit.graph.external import external_bytes, inline_external_data
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
    _unpin_dims(model)
    conform(model, specs, exporter=exporter, fixed_dim=fixed)
    save(model, path)
    if 0 < external_bytes(model) <= EXTERNAL_DATA_THRESHOLD:
        inline_external_data(path)
    return default_domain_opset(model)


def _unpin_dims(model: Any) -> None:
    """Give an output (or value info) dim the exporter declared fixed the input's symbol that onnx's own
    shape inference finds there.

    NOTE: why: torch.onnx declares the shapes torch recorded while capturing, and some keep the example's
    size: an LSTM under the while-loop decomposition declares ``[batch, 5, 24]`` for a dynamic sequence
    of 5. onnxruntime warns at every other length, and an optimizer may fold the Shape of such a value into
    a constant. Only sizes inference traces to an input's symbol change: where it knows nothing, the
    exporter's word stands.
    """
    graph = model.graph
    symbols = {dim.dim_param for value in graph.input for dim in value.type.tensor_type.shape.dim}
    symbols.discard("")
    if not symbols:
        return
    inferred = _inferred_dims(model)
    for value in [*graph.output, *graph.value_info]:
        found = inferred.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if found is None or len(found) != len(dims):
            continue
        for dim, symbol in zip(dims, found, strict=True):
            if dim.HasField("dim_value") and symbol in symbols:
                dim.dim_param = symbol  # a oneof: the fixed size goes


def _inferred_dims(model: Any) -> dict[str, list[str]]:
    """Each value's dims as ``onnx.shape_inference`` finds them from the graph inputs alone (symbols, ``""``
    for sizes), the exporter's declared shapes left out; ``{}`` when inference fails.

    NOTE: why a copy without the large weights (graph inputs of their shape instead): inference needs only
    their shapes, and a copy of a model's weights would double its memory.
    """
    import onnx

    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.raw_data) > 1024:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        else:
            graph.initializer.append(tensor)
    for output in model.graph.output:
        graph.output.add(name=output.name).type.tensor_type.elem_type = output.type.tensor_type.elem_type
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True).graph
    except Exception:
        return {}
    return {
        value.name: [dim.dim_param for dim in value.type.tensor_type.shape.dim]
        for value in [*inferred.output, *inferred.value_info]
        if value.type.tensor_type.HasField("shape")
    }
