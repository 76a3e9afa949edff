"""Make an exported graph match the user's specs: the ONE pass every exporter's output goes through.

Exporters bring their own conventions: tf2onnx names inputs after placeholders and every unknown dim
``unk__<n>``, torch.export brings its own dim names (``s0``, ``s77``), jax2onnx its traced symbols,
paddle2onnx ``Constant`` weights and ``fetch_name_0`` outputs, older exporters list initializers among the
inputs. ``conform`` turns each into the same file: inputs named, typed and shaped after ``--input`` (a clear
error when the exporter fixed a dim meant to be dynamic), outputs named as the front end chose, symbolic
output dims named after the inputs', weights as initializers, and the file saved with external data past
protobuf's limit.

Each pass is a small function on an ``onnx.ModelProto`` that changes it in place and can be tested on a
hand-built proto; ``conform`` runs them in order. Front ends keep only what is theirs (a dtype cast JAX
needs, a placeholder naming scheme) and hand the rest here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convkit.core.inputs import InputSpec
from convkit.errors import ExportError
from convkit.graph.names import all_names, rename_values, subgraphs, unused_name

if TYPE_CHECKING:
    import onnx

EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)
"""Past this many bytes a model's weights go to ``<model>.onnx.data`` beside it.

NOTE: why not 2 GiB exactly: protobuf's limit covers the whole serialized model, graph and metadata too.
"""
_EXTERNAL_MIN_TENSOR_BYTES = 1024
_EXTERNAL_ALIGNMENT = 4096
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class FixedDimMessage:
    """How the error for a dim the exporter fixed explains itself (the front end knows why it happens).

    Attributes:
        why: after "fixed dimension 0 (batch) of input 'x' to 2: ".
        fix: appended to the hint, after "give that size in --input (...), or use --data with --static".
    """

    why: str = "the model does not work for other sizes as written (or was saved with that size)"
    fix: str = ""


def conform(
    model: onnx.ModelProto,
    specs: Sequence[InputSpec],
    *,
    exporter: str,
    input_names: Mapping[str, str] | None = None,
    output_names: Sequence[str] | None = None,
    dim_names: Mapping[str, str] | None = None,
    initializer_names: Mapping[str, str] | None = None,
    constants_as_initializers: bool = False,
    batch_leads_outputs: bool = False,
    fixed_dim: FixedDimMessage | None = None,
) -> list[str]:
    """Run every pass over ``model`` in place; returns notes for the user.

    Args:
        model: the exporter's model (tensors may stay external: nothing here reads weight data).
        specs: the inputs as asked for (names, dims: ints fixed, strings symbolic, and dtypes).
        exporter: how messages name the exporter.
        input_names: the exporter's input names -> the specs' names (tf2onnx's placeholders).
        output_names: the names to give the outputs, in order (``None`` keeps the exporter's).
        dim_names: the exporter's symbol names -> the users' (JAX's traced symbols), used in output dims
            written as expressions too.
        initializer_names: initializer names -> readable ones (``linear_0.w_0`` -> ``fc1.weight``).
        constants_as_initializers: move tensor ``Constant`` nodes into initializers (paddle2onnx, Caffe).
        batch_leads_outputs: an output's first unknown dim is the inputs' shared batch dim (Keras).
        fixed_dim: how to explain a symbolic dim the exporter fixed.

    Raises:
        ExportError: the exporter fixed a dimension meant to be dynamic, or wrote another number of
            outputs than the model returns.
    """
    notes = initializers_out_of_inputs(model)
    if constants_as_initializers:
        constants_to_initializers(model)
    if initializer_names:
        rename_values(model.graph, unique_renames(model.graph, initializer_names))
    if input_names:
        rename_inputs(model.graph, input_names)
    renames = dict(dim_names or {})
    renames.update(apply_input_specs(model.graph, specs, exporter, fixed_dim or FixedDimMessage()))
    if output_names is not None:
        name_outputs(model.graph, output_names, {spec.name for spec in specs}, exporter)
    name_output_dims(model.graph, renames, _shared_batch(specs) if batch_leads_outputs else None)
    return notes


def initializers_out_of_inputs(model: onnx.ModelProto) -> list[str]:
    """Remove initializers from the graph inputs (older exporters, ``keep_initializers_as_inputs``);
    returns a note when any were.

    NOTE: why: an initializer that is also an input is an input a caller may override, so onnxruntime
    cannot fold it as a constant (no constant folding, no fusions over it), and tools list hundreds of
    "inputs" for a model that takes one. Since IR version 4 initializers need not be inputs.
    """
    if model.ir_version < 4:
        return []
    graph = model.graph
    weights = {tensor.name for tensor in graph.initializer}
    kept = [value for value in graph.input if value.name not in weights]
    removed = len(graph.input) - len(kept)
    if not removed:
        return []
    del graph.input[:]
    graph.input.extend(kept)
    return [f"removed {removed} initializer(s) from the graph inputs, so that onnxruntime can fold them"]


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


def unique_renames(graph: onnx.GraphProto, wanted: Mapping[str, str]) -> dict[str, str]:
    """``wanted`` without renames onto names the graph already uses (or that two values would share)."""
    taken = all_names(graph) - set(wanted)
    renames = {}
    for old, new in wanted.items():
        if old != new and new and new not in taken:
            renames[old] = new
            taken.add(new)
    return renames


def free_name(graph: onnx.GraphProto, name: str, keep: str = "") -> None:
    """Make ``name`` available: an internal value of that name (other than ``keep``) is renamed away."""
    names = all_names(graph)
    if name and name != keep and name in names:
        rename_values(graph, {name: unused_name(names, name)})


def rename_inputs(graph: onnx.GraphProto, renames: Mapping[str, str]) -> None:
    """Rename graph inputs (``old -> new``), moving any internal value already called ``new`` aside.

    ``old`` may carry a tensor suffix the exporter added (tf2onnx's ``x:0``); it matches by the part before
    the colon too.
    """
    by_name = {value.name: value.name for value in graph.input}
    by_name.update({value.name.split(":")[0]: value.name for value in graph.input})
    for old, new in renames.items():
        current = by_name.get(old)
        if current is None or current == new:
            continue
        free_name(graph, new, current)
        rename_values(graph, {current: new})


def apply_input_specs(
    graph: onnx.GraphProto, specs: Sequence[InputSpec], exporter: str, fixed_dim: FixedDimMessage
) -> dict[str, str]:
    """Give each input the spec's dtype and dims; returns the exporter's dim names -> the specs' names.

    An input the model never reads, which some exporters drop, is added back: the model must still accept
    it, or the data sets and ``convkit verify`` would not fit it. A spec's fixed size is written where the
    exporter left the dim symbolic; a spec's symbolic dim takes the spec's name.

    Raises:
        ExportError: the exporter fixed a dimension the spec wants symbolic. NOTE: why: torch.onnx
            "refines" dynamic shapes from torch.export's suggested fixes, so a model that fixes the batch
            (``x.view(2, 4)``) exports without complaint and would fail only at another batch size.
    """
    import onnx

    by_name = {value.name: value for value in graph.input}
    renames: dict[str, str] = {}
    for spec in specs:
        value = by_name.get(spec.name)
        if value is None:
            value = graph.input.add()
            value.CopyFrom(onnx.helper.make_tensor_value_info(spec.name, _onnx_dtype(spec.dtype), None))
        tensor_type = value.type.tensor_type
        if not tensor_type.elem_type:
            tensor_type.elem_type = _onnx_dtype(spec.dtype)
        if len(tensor_type.shape.dim) != len(spec.dims):
            # NOTE: why rewrite a shape of another rank: the exporter left it unknown (no shape at all)
            tensor_type.shape.ClearField("dim")
            for _ in spec.dims:
                tensor_type.shape.dim.add()
        dims = tensor_type.shape.dim
        for axis, want in enumerate(spec.dims):
            dim = dims[axis]
            if isinstance(want, int):
                if not dim.HasField("dim_value"):
                    dim.dim_value = want
                continue
            if dim.HasField("dim_value"):
                fixed = ",".join(str(dim.dim_value) if k == axis else str(d) for k, d in enumerate(spec.dims))
                hint = f"give that size in --input (e.g. {spec.name}:{fixed}), or use --data with --static"
                raise ExportError(
                    f"{exporter} fixed dimension {axis} ({want}) of input {spec.name!r} to "
                    f"{dim.dim_value}: {fixed_dim.why}",
                    f"{hint}; or {fixed_dim.fix}" if fixed_dim.fix else hint,
                    stage="conform",
                )
            if dim.dim_param and dim.dim_param != want:
                renames.setdefault(dim.dim_param, want)
            dim.dim_param = want
    return renames


def name_outputs(graph: onnx.GraphProto, names: Sequence[str], input_names: set[str], exporter: str) -> None:
    """Rename the graph outputs to ``names``, in order.

    NOTE: why an Identity for some: an output that is also an input, or a value returned twice, cannot
    simply take a second name.

    Raises:
        ExportError: the exporter wrote another number of outputs.
    """
    import onnx

    if len(graph.output) != len(names):
        raise ExportError(
            f"{exporter} wrote {len(graph.output)} outputs where the model returns {len(names)}",
            "return arrays, or tuples, lists or dicts of them",
            stage="conform",
        )
    renamed: set[str] = set()
    for value, name in zip(graph.output, names, strict=True):
        old = value.name
        if old != name:
            if old in input_names or old in renamed:
                free_name(graph, name)
                graph.node.append(onnx.helper.make_node("Identity", [old], [name], name=f"{name}_identity"))
            else:
                free_name(graph, name, old)
                rename_values(graph, {old: name})
        value.name = name
        renamed.add(name)


def name_output_dims(graph: onnx.GraphProto, renames: Mapping[str, str], batch: str | None = None) -> None:
    """Symbolic dims of the outputs (and value infos) take the users' names: each symbol in ``renames`` is
    replaced (also inside expressions such as ``2*s0``); an output dim that is still unknown, or named by
    the exporter alone, becomes ``<output>_dim<axis>`` (``batch`` for the first one, when given).
    """
    known = {
        dim.dim_param for value in graph.input for dim in value.type.tensor_type.shape.dim if dim.dim_param
    }
    outputs = {value.name for value in graph.output}
    for value in [*graph.output, *graph.value_info]:
        stem = re.sub(r"[^A-Za-z0-9_]", "_", value.name)
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]
            elif dim.dim_param and renames:
                dim.dim_param = _IDENTIFIER.sub(lambda m: renames.get(m.group(0), m.group(0)), dim.dim_param)
            if value.name not in outputs or dim.dim_param in known:
                continue
            if dim.dim_param and set(_IDENTIFIER.findall(dim.dim_param)) <= known:
                continue
            dim.dim_param = batch if axis == 0 and batch else f"{stem}_dim{axis}"


def _shared_batch(specs: Sequence[InputSpec]) -> str | None:
    """The symbolic first dim all inputs share, if they share one."""
    leading = {spec.dims[0] for spec in specs if spec.dims}
    first = next(iter(leading)) if len(leading) == 1 else None
    return first if isinstance(first, str) else None


def _onnx_dtype(dtype: str) -> int:
    import onnx

    return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def save(model: onnx.ModelProto, path: Path, side_data: Mapping[str, bytes] | None = None) -> str | None:
    """Write ``model`` to ``path``; returns the external data file's name when the weights went to one.

    Past ``EXTERNAL_DATA_THRESHOLD`` every tensor of 1 KiB or more goes to ``<name>.data`` beside the
    model, 4 KiB aligned (onnxruntime memory-maps external data in page-sized pieces). Tensors an exporter
    already marked external with their bytes in ``side_data`` (tf2onnx's large-model storage, by location)
    go there too. Tensors external to a file already on disk (a model read without its external data) are
    left as they are.

    NOTE: why our own writer: tf2onnx's writes a zip archive, which onnxruntime cannot open, and one writer
    for every exporter keeps one threshold and one layout.
    """
    import onnx

    side_data = side_data or {}
    large = model.ByteSize() >= EXTERNAL_DATA_THRESHOLD
    moved: list[tuple[onnx.TensorProto, bytes]] = []
    for tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
            if location in side_data:
                moved.append((tensor, side_data[location]))
        elif large and len(tensor.raw_data) >= _EXTERNAL_MIN_TENSOR_BYTES:
            moved.append((tensor, tensor.raw_data))
    if not moved:
        path.write_bytes(model.SerializeToString())
        return None
    data_name = f"{path.name}.data"
    offset = 0
    with open(path.parent / data_name, "wb") as out:
        for tensor, data in moved:
            padding = -offset % _EXTERNAL_ALIGNMENT
            out.write(b"\0" * padding)
            offset += padding
            out.write(data)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, entry_value in (("location", data_name), ("offset", offset), ("length", len(data))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(entry_value)
            offset += len(data)
    path.write_bytes(model.SerializeToString())
    return data_name


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every initializer and ``Constant`` tensor, in the graph and its subgraphs."""
    found: list[onnx.TensorProto] = []
    for graph in subgraphs(model.graph):
        found.extend(graph.initializer)
        for node in graph.node:
            found.extend(attribute.t for attribute in node.attribute if attribute.HasField("t"))
    return found


def conform_file(
    raw: Path,
    target: Path,
    specs: Sequence[InputSpec],
    *,
    exporter: str,
    initializer_names: Mapping[str, str] | None = None,
    requested_opset: int | None = None,
    exporter_version: str | None = None,
) -> tuple[int, list[str]]:
    """Conform the model a worker wrote at ``raw`` and save it at ``target``: weights as initializers
    named after the model's parameters, outputs ``output`` / ``output_N``.

    Returns:
        The opset written and notes for the user.

    Raises:
        ModelLoadError: the worker's file is not an ONNX model.
        ExportError: a dimension meant to be dynamic is fixed.
    """
    import onnx

    from convkit.errors import ModelLoadError
    from convkit.graph.model import default_domain_opset

    try:
        model = onnx.load(str(raw))
    except Exception as exc:
        raise ModelLoadError(f"{exporter} wrote no readable ONNX model: {exc}", stage="capture") from exc
    count = len(model.graph.output)
    notes = conform(
        model,
        specs,
        exporter=exporter,
        output_names=["output"] if count == 1 else [f"output_{k}" for k in range(count)],
        initializer_names=initializer_names,
        constants_as_initializers=True,
    )
    if not model.producer_name:
        model.producer_name = exporter
        model.producer_version = exporter_version or ""
    opset = default_domain_opset(model)
    if requested_opset is not None and opset != requested_opset:
        notes.append(f"{exporter} wrote opset {opset} (asked for {requested_opset})")
    save(model, target)
    return opset, notes
