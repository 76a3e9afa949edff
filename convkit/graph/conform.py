"""Tidy an ONNX model that a worker exported, in the core process with the core's onnx, before it is checked.

Exporters run in framework environments bring their own conventions: paddle2onnx writes weights as
``Constant`` nodes named after program variables (``linear_0.w_0``), outputs named ``fetch_name_0`` and
symbolic dims named ``DynamicDimension.0``. ``finish_model`` makes the file read like every other convkit
export: weights as initializers named after the layer (``fc1.weight``), outputs ``output`` / ``output_N``,
input dims named after ``--input``, and a clear error when the model fixed a dimension meant to be dynamic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from convkit.core.inputs import InputSpec
from convkit.errors import ExportError, ModelLoadError
from convkit.graph.names import all_names, rename_values

if TYPE_CHECKING:
    import onnx


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Move the main graph's ``Constant`` nodes that hold a tensor (``value``) into initializers; returns
    how many moved.

    NOTE: why: weights as initializers are what tools expect (``convkit inspect`` counts parameters from
    them, quantizers and editors find weights there), and onnxruntime treats both alike.
    """
    graph = model.graph
    outputs = {value.name for value in graph.output}
    kept = []
    moved = 0
    for node in graph.node:
        is_tensor = [a.name for a in node.attribute] == ["value"]
        constant = node.op_type == "Constant" and node.domain in ("", "ai.onnx")
        if constant and is_tensor and node.output[0] not in outputs:
            tensor = graph.initializer.add()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            moved += 1
            continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return moved


def _unique_renames(model: onnx.ModelProto, wanted: Mapping[str, str]) -> dict[str, str]:
    """``wanted`` without renames onto names the graph already uses (or uses twice)."""
    taken = all_names(model.graph) - set(wanted)
    renames = {}
    for old, new in wanted.items():
        if old != new and new and new not in taken:
            renames[old] = new
            taken.add(new)
    return renames


def name_dims(model: onnx.ModelProto, specs: Sequence[InputSpec], exporter: str) -> None:
    """Name the inputs' symbolic dims after ``specs``, fix the dims ``specs`` fix, and name the outputs'
    remaining symbolic dims ``<output>_dim<axis>``.

    Raises:
        ExportError: the model has a fixed size where ``specs`` want a symbolic dim.
    """
    by_name = {value.name: value for value in model.graph.input}
    renames: dict[str, str] = {}
    for spec in specs:
        value = by_name.get(spec.name)
        if value is None:
            continue
        dims = value.type.tensor_type.shape.dim
        for axis, want in enumerate(spec.dims[: len(dims)]):
            dim = dims[axis]
            if isinstance(want, int):
                if not dim.HasField("dim_value"):
                    dim.dim_value = want
                continue
            if dim.HasField("dim_value"):
                fixed = ",".join(str(dim.dim_value) if k == axis else str(d) for k, d in enumerate(spec.dims))
                raise ExportError(
                    f"{exporter} fixed dimension {axis} ({want}) of input {spec.name!r} to {dim.dim_value}: "
                    "the model does not work for other sizes as written (or was saved with that size)",
                    f"give that size in --input (e.g. {spec.name}:{fixed}) or use --static",
                )
            if dim.dim_param != want:
                if dim.dim_param:
                    renames.setdefault(dim.dim_param, want)
                dim.dim_param = want
    known = {d.dim_param for value in model.graph.input for d in value.type.tensor_type.shape.dim}
    outputs = {value.name for value in model.graph.output}
    for value in [*model.graph.output, *model.graph.value_info]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]
            elif dim.dim_param and dim.dim_param not in known and value.name in outputs:
                dim.dim_param = f"{value.name}_dim{axis}"


def finish_model(
    raw: Path,
    target: Path,
    specs: Sequence[InputSpec],
    initializer_names: Mapping[str, str],
    exporter: str,
    requested_opset: int | None = None,
    exporter_version: str | None = None,
) -> tuple[int, list[str]]:
    """Tidy the model a worker wrote at ``raw`` and save it at ``target``.

    Args:
        raw: the worker's file.
        target: where the finished model goes (the caller's staging folder).
        specs: the inputs as asked for (names, symbolic dims).
        initializer_names: program value name -> the name to give its initializer (``state_dict`` names).
        exporter: how messages name the exporter.
        requested_opset: the opset asked for; a note says when the exporter wrote another.
        exporter_version: recorded as the model's producer version when the exporter left none.

    Returns:
        The opset written and notes for the user.

    Raises:
        ModelLoadError: the worker's file is not an ONNX model.
        ExportError: a dimension meant to be dynamic is fixed.
    """
    import onnx

    from convkit.graph.model import default_domain_opset

    try:
        model = onnx.load(str(raw))
    except Exception as exc:
        raise ModelLoadError(f"{exporter} wrote no readable ONNX model: {exc}") from exc
    notes: list[str] = []
    constants_to_initializers(model)
    rename_values(model.graph, _unique_renames(model, initializer_names))
    outputs = [value.name for value in model.graph.output]
    wanted = ["output"] if len(outputs) == 1 else [f"output_{k}" for k in range(len(outputs))]
    rename_values(model.graph, _unique_renames(model, dict(zip(outputs, wanted, strict=True))))
    name_dims(model, specs, exporter)
    if not model.producer_name:
        model.producer_name = exporter
        model.producer_version = exporter_version or ""
    opset = default_domain_opset(model)
    if requested_opset is not None and opset != requested_opset:
        notes.append(f"{exporter} wrote opset {opset} (asked for {requested_opset})")
    onnx.save(model, str(target))
    return opset, notes
