"""Keras layers paired with the ONNX values tf2onnx made of them, for ``verify --localize`` against
Keras (see ``convkit.frontends.base.LayerPairing``)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.inputs import InputSpec
from convkit.frontends._quiet import Quiet
from convkit.frontends.base import ExportOptions, Frontend, LayerOutput
from convkit.frontends.tensorflow._common import (
    SavedModelSignature,
    call_model,
    flatten,
    import_tf,
    keras_inputs,
)

# NOTE: why a cap: a nested model used as one layer owns hundreds of values; its outputs come first in the
# preference order, so the first few candidates suffice and memory stays bounded.
_MAX_CANDIDATES = 8
_VALUES_PER_RUN = 64


def _probe_layers(model: Any, keras: Any) -> list[tuple[Any, Any]]:
    """(layer, its symbolic output) for each layer of a functional or Sequential model that has exactly one
    call and one output tensor, in the model's (topological) order; empty for other models."""
    if isinstance(model, SavedModelSignature) or keras_inputs(model) is None:
        return []
    probed = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        # NOTE: why one call only: a shared layer has one output per call, and only one of them could be
        # paired with "the" layer's scope.
        if len(getattr(layer, "_inbound_nodes", [])) != 1:
            continue
        try:
            output = layer.output
        except (AttributeError, ValueError, RuntimeError):
            continue
        if isinstance(output, keras.KerasTensor):
            probed.append((layer, output))
    return probed


def _scope_of(component: str, layer_names: Sequence[str]) -> str | None:
    """The layer whose name scope ``component`` is: ``conv2`` and ``conv2_1`` both belong to ``conv2``.

    NOTE: why suffixes first: Keras enters each layer's name scope inside the traced function, and TensorFlow
    makes it unique (``conv2_1``); where ``dense`` and ``dense_1`` both exist, ``dense_1`` is ``dense``'s
    scope. A wrong guess costs nothing more than a candidate the check rejects.
    """
    suffixed = [n for n in layer_names if re.fullmatch(re.escape(n) + r"_\d+", component)]
    if suffixed:
        return max(suffixed, key=len)
    return component if component in layer_names else None


def _scope_candidates(graph: Any, model_name: str, layer_names: Sequence[str]) -> dict[str, list[str]]:
    """For each layer, the values computed in its name scope, best first: values read outside the scope (or
    graph outputs) before internal ones, later before earlier."""
    model_scope = re.compile(re.escape(model_name) + r"(_\d+)?")
    owner: dict[str, str | None] = {}  # value -> layer that computed it
    for node in graph.node:
        parts = (node.name or (node.output[0] if node.output else "")).split("/")
        layer = None
        if len(parts) >= 3 and model_scope.fullmatch(parts[0]):
            layer = _scope_of(parts[1], layer_names)
        elif len(parts) >= 2 and not model_scope.fullmatch(parts[0]):
            layer = _scope_of(parts[0], layer_names)
        for out in node.output:
            if out:
                owner[out] = layer
    escaping = {value.name for value in graph.output}
    for node in graph.node:
        reader = owner.get(node.output[0]) if node.output else None
        for name in node.input:
            if name in owner and owner[name] is not None and owner[name] != reader:
                escaping.add(name)
    ordered: dict[str, list[str]] = {}
    for value in reversed(list(owner)):
        layer = owner[value]
        if layer is not None:
            ordered.setdefault(layer, []).append(value)
    return {
        layer: sorted(values, key=lambda v: v not in escaping)[:_MAX_CANDIDATES]
        for layer, values in ordered.items()
    }


def _align_names(graph: Any, other: Any) -> dict[str, str]:
    """Map ``graph``'s value names to ``other``'s, for two exports of one model.

    NOTE: why not equal names: tf2onnx numbers the nodes it inserts (``Transpose__36``) from a process-wide
    counter, so a second export in one process numbers them differently. Names are matched with those
    numbers blanked, and by their order among equal names.
    """

    def keyed(g: Any) -> dict[tuple[str, int], str]:
        seen: dict[str, int] = {}
        keys: dict[tuple[str, int], str] = {}
        for node in g.node:
            for out in node.output:
                if out:
                    key = re.sub(r"__\d+", "__", out)
                    seen[key] = seen.get(key, 0) + 1
                    keys[(key, seen[key])] = out
        return keys

    theirs = keyed(other)
    return {name: theirs[key] for key, name in keyed(graph).items() if key in theirs}


def _layouts(activation: np.ndarray) -> list[tuple[int, ...]]:
    """Axis orders to try: as is, channels-last to channels-first (tf2onnx around convolutions), and back."""
    rank = activation.ndim
    perms = [tuple(range(rank))]
    if rank >= 3:
        perms += [(0, rank - 1, *range(1, rank - 1)), (0, *range(2, rank), 1)]
    return list(dict.fromkeys(perms))


def _pick_values(
    proto: Any,
    wanted: Sequence[tuple[str, np.ndarray, Sequence[str]]],
    inputs: Mapping[str, np.ndarray],
    numeric: bool,
    aliases: Mapping[str, str] | None = None,
) -> list[LayerOutput]:
    """For each (layer, activation, candidates), the first candidate whose value in ``proto`` (run in
    onnxruntime; a candidate is called ``aliases[candidate]`` there) has the activation's shape in some
    layout and, when ``numeric``, its values too."""
    from convkit.core.compare import compare_arrays
    from convkit.diagnose.localize import onnxruntime_evaluator

    alias = aliases or {}
    evaluate = onnxruntime_evaluator(proto)
    feeds = {name: np.asarray(value) for name, value in inputs.items()}
    # NOTE: why in groups: every exposed value is held at once; a group exposes at most _VALUES_PER_RUN
    groups: list[list[tuple[str, np.ndarray, Sequence[str]]]] = [[]]
    size = 0
    for entry in wanted:
        if groups[-1] and size + len(entry[2]) > _VALUES_PER_RUN:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += len(entry[2])
    pairs: list[LayerOutput] = []
    for group in groups:
        names = list(dict.fromkeys(v for _, _, candidates in group for v in candidates))
        try:
            computed = evaluate([alias.get(v, v) for v in names], feeds)
            values = dict(zip(names, computed, strict=True))
        except Exception:  # NOTE: why: a value onnxruntime cannot expose is no reason to abandon the rest
            continue
        for layer, activation, candidates in group:
            match = _match(activation, [(v, values[v]) for v in candidates], numeric, compare_arrays)
            if match is not None:
                pairs.append(LayerOutput(layer=layer, onnx_value=match[0], value=match[1]))
    return pairs


def _match(
    activation: np.ndarray,
    candidates: Sequence[tuple[str, np.ndarray]],
    numeric: bool,
    compare: Callable[..., Any],
) -> tuple[str, np.ndarray] | None:
    """The first candidate equal to ``activation`` in some layout (by shape only unless ``numeric``), with
    the activation in that layout."""
    for name, got in candidates:
        got = np.asarray(got)
        for perm in _layouts(activation):
            arranged = activation.transpose(perm)
            if arranged.shape != got.shape:
                continue
            if not numeric or compare(name, arranged, got).passed:
                return name, np.ascontiguousarray(arranged)
    return None


def layer_outputs(
    frontend: Frontend, model: Any, onnx_model: Any, inputs: Mapping[str, np.ndarray]
) -> list[LayerOutput]:
    """Each layer's activation of a functional or Sequential Keras model, paired with the ONNX value of
    ``onnx_model`` (exported by ``frontend.export``) that holds the same tensor.

    tf2onnx names nodes after the TensorFlow ops, so a node's name carries its layer's name scope
    (``model_1/conv2_1/Relu``). For each layer the candidates are the values computed in its scope, the
    ones read outside it (its outputs) first, the last computed first; the activation is matched in the
    candidate's layout (tf2onnx keeps convolutions channels-first between Transposes, so an NHWC
    activation is compared transposed to NCHW).

    NOTE: why each pairing is first checked on a fresh export of ``model``: tf2onnx's optimizer merges
    operations across layers (a BatchNormalization folded into the Conv before it, the merged node named
    after the BatchNormalization; transposes pushed through neighbours), so a value in a layer's scope
    need not hold that layer's output. A pairing is kept only where a fresh, faithful export of the same
    model (same opset and input dims, so the same value names) computes the activation within the
    default tolerance; ``onnx_model`` itself may be the faulty file under investigation, so its values
    prove nothing. When no fresh export can be made, pairs are chosen by shape alone.

    Layers without a counterpart (input layers, Dropout at inference, shared layers, layers with several
    outputs, folded layers) are left out. Subclassed models and SavedModels give an empty list.

    Args:
        frontend: the front end whose ``export`` made ``onnx_model`` (it makes the fresh export).
        model: the Keras model.
        onnx_model: the ``onnx.ModelProto`` under investigation.
        inputs: input name -> array, the data both run on.

    Returns:
        One ``LayerOutput`` per paired layer, in the model's (topological) order.
    """
    tf, keras = import_tf()
    probed = _probe_layers(model, keras)
    if not probed:
        return []
    # NOTE: why the private attribute: the probe must take the inputs in the model's own structure (a
    # dict-structured model is called with a dict), as keras_inputs reads it.
    structure = getattr(model, "_inputs_struct", None)
    if structure is None:
        structure = model.inputs
    probe = keras.Model(structure, [tensor for _, tensor in probed])
    tensors = {name: tf.convert_to_tensor(np.asarray(value)) for name, value in inputs.items()}
    with Quiet():
        activations = [np.asarray(value) for _, value in flatten(call_model(probe, tensors))]
    candidates = _scope_candidates(onnx_model.graph, str(model.name), [layer.name for layer, _ in probed])
    wanted = [
        (layer.name, activation, candidates.get(layer.name, []))
        for (layer, _), activation in zip(probed, activations, strict=True)
    ]
    wanted = [entry for entry in wanted if entry[2]]
    if not wanted:
        return []
    fresh = _fresh_export(frontend, model, onnx_model, inputs)
    if fresh is not None:
        aliases = _align_names(onnx_model.graph, fresh.graph)
        shared = [(n, a, [v for v in c if v in aliases]) for n, a, c in wanted]
        if any(c for _, _, c in shared):
            return _pick_values(fresh, [e for e in shared if e[2]], inputs, True, aliases)
    # NOTE: why the model under test as the fallback: it is asked for shapes only, never for values
    return _pick_values(onnx_model, wanted, inputs, numeric=False)


def _fresh_export(frontend: Frontend, model: Any, onnx_model: Any, inputs: Mapping[str, np.ndarray]) -> Any:
    """``model`` exported again at ``onnx_model``'s opset with its input names and dims, as an
    ``onnx.ModelProto``; ``None`` when that fails."""
    import onnx

    from convkit.graph.model import default_domain_opset

    initializers = {init.name for init in onnx_model.graph.initializer}
    specs = []
    for value in onnx_model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims: list[int | str] = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or f"d{axis}")
            for axis, d in enumerate(tensor_type.shape.dim)
        ]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        specs.append(InputSpec(name=value.name, dims=dims, dtype=dtype))
    try:
        with tempfile.TemporaryDirectory(prefix="convkit-layers-") as folder:
            path = Path(folder) / "fresh.onnx"
            frontend.export(model, specs, inputs, path, ExportOptions(opset=default_domain_opset(onnx_model)))
            return onnx.load(str(path))
    except Exception:  # NOTE: why broad: a failed re-export only costs the validation, never the answer
        return None
