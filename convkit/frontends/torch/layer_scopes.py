"""Where each node of an exported ONNX file came from, and which nodes make up each call of each module.

The torch.export-based exporter records on each node the module stack it was traced in
(``pkg.torch.onnx.name_scopes``: ``['', 'encoder', 'encoder.layers.0', 'linear_3']``, the module paths
outermost first, then the torch.export node's own name); the TorchScript exporter writes the module path into
node names instead (``/encoder/layers.0/Gemm``), and is read from those. Used by ``layers``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

_SCOPE_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class _NodeScope:
    """Where one ONNX node came from.

    ``modules`` are the enclosing module paths, outermost first (the root module, ``""``, left out);
    ``calls`` the call index of each where the exporter recorded it (TorchScript's ``/pool_1/`` is the
    second call of ``pool``), else ``None``; ``op`` names the node itself: torch.export's node name
    (``relu_2``) or the last part of a TorchScript node name (``Relu_2``).
    """

    modules: tuple[str, ...]
    calls: tuple[int | None, ...]
    op: str


@dataclass
class Graph:
    """The facts about the ONNX graph the pairing needs, computed once."""

    nodes: list[Any]
    scopes: list[_NodeScope | None]
    producer: dict[str, int]
    consumers: dict[str, list[int]]
    outputs: list[str]
    shapes: dict[str, tuple[list[int | str | None] | None, int]]


# ====================================================================================== reading the graph
def read_graph(graph: Any, module_paths: set[str]) -> Graph | None:
    """The graph's nodes with their scopes; ``None`` when no node records one.

    Args:
        graph: the ``onnx.GraphProto`` of the exported file.
        module_paths: every module path of the model (``named_modules``), to resolve TorchScript names.

    Returns:
        The nodes, their scopes, who produces and reads each value, the graph's outputs and the declared
        shapes; ``None`` when no node records where it came from.
    """
    nodes = list(graph.node)
    if any(prop.key == _SCOPE_KEY for node in nodes for prop in node.metadata_props):
        scopes = [_dynamo_scope(node) for node in nodes]
    else:
        scopes = [_torchscript_scope(node.name, module_paths) for node in nodes]
    if not any(scope is not None for scope in scopes):
        return None
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.output:
            if name:
                producer[name] = index
        for name in dict.fromkeys(node.input):
            if name:
                consumers.setdefault(name, []).append(index)
    shapes: dict[str, tuple[list[int | str | None] | None, int]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        dims: list[int | str | None] | None = None
        if tensor_type.HasField("shape"):
            dims = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tensor_type.shape.dim
            ]
        shapes[value.name] = (dims, tensor_type.elem_type)
    return Graph(nodes, scopes, producer, consumers, [value.name for value in graph.output], shapes)


def _dynamo_scope(node: Any) -> _NodeScope | None:
    """The scope torch.export recorded: ``['', 'conv1', 'conv2d']`` is node ``conv2d`` in module ``conv1``.

    A node the optimizer made without metadata has no scope (``None``). torch.export marks nodes outside
    every module (its ``sym_size`` reads) with a stack named ``_empty_nn_module_stack_from_metadata_hook``:
    those belong to the root.
    """
    text = next((prop.value for prop in node.metadata_props if prop.key == _SCOPE_KEY), None)
    if text is None:
        return None
    try:
        parts = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(parts, list | tuple) or not parts or not all(isinstance(p, str) for p in parts):
        return None
    modules = tuple(parts[1:-1]) if parts[0] == "" else ()
    return _NodeScope(modules, (None,) * len(modules), parts[-1])


def _torchscript_scope(name: str, module_paths: set[str]) -> _NodeScope | None:
    """The scope in a TorchScript node name: ``/blocks.0/seq/seq.0/MatMul`` is in ``blocks.0``,
    ``blocks.0.seq`` and ``blocks.0.seq.0``; ``/pool_1/MaxPool`` is in the second call of ``pool``.

    NOTE: why each part is tried against every enclosing path: the exporter names a container's child
    relative to the container's parent (``seq.0`` under ``seq``), a plain child by its attribute name.
    """
    if not name.startswith("/"):
        return None
    *parts, op = name[1:].split("/")
    chain: list[str] = []
    calls: list[int | None] = []
    for part in parts:
        resolved = _resolve(part, chain, module_paths)
        call = 0
        if resolved is None:
            repeated = re.fullmatch(r"(.+)_(\d+)", part)
            if repeated:
                resolved = _resolve(repeated.group(1), chain, module_paths)
                call = int(repeated.group(2))
        if resolved is None:
            return None
        chain.append(resolved)
        calls.append(call)
    return _NodeScope(tuple(chain), tuple(calls), op)


def _resolve(part: str, chain: Sequence[str], module_paths: set[str]) -> str | None:
    inside = chain[-1] if chain else ""
    for base in [*reversed(chain), ""]:
        path = f"{base}.{part}" if base else part
        if path in module_paths and (not inside or path.startswith(inside + ".")):
            return path
    return None


# ===================================================================================== what to look for
@dataclass
class Plan:
    """One module's ONNX node groups, one per call (in call order)."""

    groups: list[list[int]]


def plan_calls(graph: Graph, module_paths: Iterable[str]) -> dict[str, Plan]:
    """For each module with nodes in the graph, the nodes of each of its calls.

    A module called once owns every node in its scope. For one called several times (a shared ``pool``),
    the calls are told apart by the call index in TorchScript names, else by splitting its nodes into
    connected pieces, in graph order; the count is checked against the eager run's later.

    Args:
        graph: the graph as :func:`read_graph` read it.
        module_paths: every module path of the model.

    Returns:
        A plan per module path that owns nodes (the root module, ``""``, left out).
    """
    members: dict[str, list[int]] = {}
    for index, scope in enumerate(graph.scopes):
        if scope is None:
            continue
        for path in scope.modules:
            members.setdefault(path, []).append(index)
    plans: dict[str, Plan] = {}
    for path in module_paths:
        nodes = members.get(path)
        if not path or not nodes:
            continue
        plans[path] = Plan(_calls(graph, path, nodes))
    return plans


def _calls(graph: Graph, path: str, nodes: list[int]) -> list[list[int]]:
    recorded: dict[int, list[int]] = {}
    for index in nodes:
        scope = graph.scopes[index]
        assert scope is not None
        call = scope.calls[scope.modules.index(path)]
        if call is None:
            recorded = {}
            break
        recorded.setdefault(call, []).append(index)
    if recorded:
        return [recorded[call] for call in sorted(recorded)]
    return _connected(graph, nodes)


def _connected(graph: Graph, nodes: list[int]) -> list[list[int]]:
    """``nodes`` split into weakly connected pieces (edges between them only), ordered by first node."""
    parent = {index: index for index in nodes}

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for index in nodes:
        for name in graph.nodes[index].input:
            source = graph.producer.get(name)
            if source in parent:
                parent[root(index)] = root(source)
    pieces: dict[int, list[int]] = {}
    for index in nodes:
        pieces.setdefault(root(index), []).append(index)
    return sorted(pieces.values(), key=lambda piece: piece[0])
