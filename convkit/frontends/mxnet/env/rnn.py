"""Stacked RNNs made single-layer before mx.onnx converts them: each ``RNN`` node of ``num_layers`` > 1 (a
Gluon ``rnn.LSTM`` / ``GRU`` / ``RNN`` of several layers) becomes a chain of one-layer ``RNN`` nodes, each
taking its own slice of the flat parameter vector and of the initial states.

NOTE: why: mx.onnx 1.9.1's ``convert_RNN`` converts one or two layers only, and for two it slices layer 0's
input weights as 4·S² values (it assumes input size = hidden size): a 2-layer LSTM whose input size differs
from its hidden size converts to a model onnxruntime cannot run. Its one-layer translation reads the input
size from the data, so a chain of one-layer nodes converts right at any depth and size.

Runs in the MXNet environment only: it imports mxnet (inside functions), never convkit; ``export.py`` loads it
by path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# MXNet's RNN modes -> gates per layer and direction (MXNet's flat parameter layout)
_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _splittable(node: Mapping[str, Any]) -> bool:
    attrs = node.get("attrs", {})
    return (
        node["op"] == "RNN"
        and int(attrs.get("num_layers", "1")) > 1
        and attrs.get("mode") in _GATES
        and attrs.get("state_outputs") == "True"
        and attrs.get("projection_size", "None") == "None"
        and attrs.get("use_sequence_length", "False") == "False"
    )


def split_stacked_rnns(symbol: Any, shapes: Mapping[str, tuple[int, ...]]) -> Any:
    """``symbol`` with every stacked ``RNN`` node replaced by one node per layer; ``symbol`` itself when it
    has none. ``shapes``: the graph inputs' shapes (the example's), to learn each RNN's input size.

    NOTE: why not for projections, sequence lengths or nodes without state outputs: mx.onnx refuses those at
    any depth with its own message, which the unchanged node keeps.
    """
    import mxnet as mx

    graph = json.loads(symbol.tojson())
    nodes = graph["nodes"]
    if not any(_splittable(node) for node in nodes):
        return symbol
    rows = graph["node_row_ptr"]
    _, internal_shapes, _ = symbol.get_internals().infer_shape_partial(**shapes)
    new_nodes: list[dict[str, Any]] = []
    moved: dict[tuple[int, int], list[int]] = {}  # (old node, output) -> [new node, output, 0]
    counts: list[int] = []

    def add(node: dict[str, Any], outputs: int) -> int:
        new_nodes.append(node)
        counts.append(outputs)
        return len(new_nodes) - 1

    for index, node in enumerate(nodes):
        inputs = [moved[(i, k)] for i, k, _ in node["inputs"]]
        if not _splittable(node):
            new = add(dict(node, inputs=inputs), rows[index + 1] - rows[index])
            for k in range(rows[index + 1] - rows[index]):
                moved[(index, k)] = [new, k, 0]
            continue
        data_index, data_output, _ = node["inputs"][0]
        input_size = int(internal_shapes[rows[data_index] + data_output][2])  # NOTE: why [2]: RNN data is TNC
        zeros = [nodes[i] if nodes[i]["op"] == "_zeros" else None for i, _, _ in node["inputs"][2:]]
        for k, ref in enumerate(_layers(node, inputs, zeros, input_size, add)):
            moved[(index, k)] = ref
    graph.update(
        nodes=new_nodes,
        arg_nodes=[k for k, node in enumerate(new_nodes) if node["op"] == "null"],
        node_row_ptr=[sum(counts[:k]) for k in range(len(counts) + 1)],
        heads=[moved[(i, k)] for i, k, _ in graph["heads"]],
    )
    return mx.sym.load_json(json.dumps(graph))


def _layers(
    node: Mapping[str, Any],
    inputs: list[list[int]],
    zeros: list[Mapping[str, Any] | None],
    input_size: int,
    add: Any,
) -> list[list[int]]:
    """Add the one-layer nodes that compute ``node`` (inputs already renumbered; ``zeros``: each initial
    state's ``_zeros`` node, or None); returns references to what stands for its outputs (the last layer's
    sequence, then each state's layers concatenated)."""
    attrs = node["attrs"]
    name, layers, size = node["name"], int(attrs["num_layers"]), int(attrs["state_size"])
    gates, directions = _GATES[attrs["mode"]], 2 if attrs.get("bidirectional") == "True" else 1
    data, params, states = inputs[0], inputs[1], inputs[2:]
    widths = [input_size] + [size * directions] * (layers - 1)
    weights = [directions * gates * size * (width + size) for width in widths]
    bias = directions * 2 * gates * size
    biases_start = sum(weights)

    def piece(label: str, begin: int, end: int) -> list[int]:
        slice_node = {
            "op": "slice",
            "name": f"{name}_{label}",
            "attrs": {"begin": f"({begin},)", "end": f"({end},)"},
        }
        return [add(dict(slice_node, inputs=[params]), 1), 0, 0]

    sequence, state_parts = data, [[] for _ in states]
    for layer in range(layers):
        start = sum(weights[:layer])
        own = [
            piece(f"l{layer}_weights", start, start + weights[layer]),
            piece(f"l{layer}_biases", biases_start + layer * bias, biases_start + (layer + 1) * bias),
        ]
        joined = [
            add(
                {
                    "op": "Concat",
                    "name": f"{name}_l{layer}_params",
                    "attrs": {"dim": "0", "num_args": "2"},
                    "inputs": own,
                },
                1,
            ),
            0,
            0,
        ]
        layer_states = [
            [add(_layer_state(f"{name}_l{layer}_state{k}", state, zero, layer, directions), 1), 0, 0]
            for k, (state, zero) in enumerate(zip(states, zeros, strict=True))
        ]
        one = {
            "op": "RNN",
            "name": f"{name}_l{layer}",
            "attrs": dict(attrs, num_layers="1"),
            "inputs": [sequence, joined, *layer_states],
        }
        rnn = add(one, 1 + len(states))
        sequence = [rnn, 0, 0]
        for k, part in enumerate(state_parts):
            part.append([rnn, k + 1, 0])
    outputs = [sequence]
    for k, part in enumerate(state_parts):
        concat = {"op": "Concat", "name": f"{name}_state{k}", "attrs": {"dim": "0", "num_args": str(layers)}}
        outputs.append([add(dict(concat, inputs=part), 1), 0, 0])
    return outputs


def _layer_state(
    name: str, state: list[int], zero: Mapping[str, Any] | None, layer: int, directions: int
) -> dict[str, Any]:
    """The node giving one layer its initial state: rows ``layer * directions`` on of ``state``.

    NOTE: why a fresh ``_zeros`` for Gluon's zero states: their batch dim is 0 (unknown until the RNN
    infers it backwards), which a slice cannot infer through.
    """
    if zero is not None:
        shape = [int(d) for d in zero["attrs"]["shape"].strip("()").split(",") if d.strip()]
        attrs = dict(zero["attrs"], shape=str(tuple([directions, *shape[1:]])))
        return {"op": "_zeros", "name": name, "attrs": attrs, "inputs": []}
    begin, end = layer * directions, (layer + 1) * directions
    attrs = {"axis": "0", "begin": str(begin), "end": str(end)}
    return {"op": "slice_axis", "name": name, "attrs": attrs, "inputs": [state]}
