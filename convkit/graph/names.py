"""Value names in an ONNX graph and its subgraphs: list them, rename them everywhere, find a free one.

Shared by the front ends that tidy an exporter's output (input and output names, dims) in the core.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If, Loop, Scan bodies) below it."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from subgraphs(attribute.g)
            for sub in attribute.graphs:
                yield from subgraphs(sub)


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name used in ``graph`` and its subgraphs: inputs, outputs, value infos, initializers and
    node inputs and outputs."""
    names: set[str] = set()
    for sub in subgraphs(graph):
        names.update(value.name for value in (*sub.input, *sub.output, *sub.value_info))
        names.update(init.name for init in sub.initializer)
        for node in sub.node:
            names.update(node.input)
            names.update(node.output)
    return names


def rename_values(graph: onnx.GraphProto, renames: Mapping[str, str]) -> None:
    """Rename values everywhere they appear: node inputs and outputs (subgraphs too), graph inputs, outputs,
    value infos and initializers."""
    if not renames:
        return
    for sub in subgraphs(graph):
        for node in sub.node:
            node.input[:] = [renames.get(name, name) for name in node.input]
            node.output[:] = [renames.get(name, name) for name in node.output]
        for value in (*sub.input, *sub.output, *sub.value_info):
            value.name = renames.get(value.name, value.name)
        for init in sub.initializer:
            init.name = renames.get(init.name, init.name)


def unused_name(names: set[str], stem: str) -> str:
    """``stem__1``, ``stem__2`` ...: the first that is not in ``names``."""
    n = 1
    while f"{stem}__{n}" in names:
        n += 1
    return f"{stem}__{n}"


def output_names(paths: Sequence[tuple[str, ...]], keyed: bool, taken: Sequence[str]) -> list[str]:
    """ONNX names for a model's flattened outputs: ``output`` for one output, ``output_N`` for a sequence,
    the keys (``logits``) when the model returns a mapping (``keyed``); unique and distinct from ``taken``
    (the input names).

    Args:
        paths: each output's path in the returned structure (``()`` for a lone tensor, ``("0",)``,
            ``("logits",)``).
    """
    if list(paths) == [()]:
        candidates = ["output"]
    elif keyed:
        candidates = ["_".join(path) for path in paths]
    else:
        candidates = ["_".join(("output", *path)) for path in paths]
    names: list[str] = []
    used = set(taken)
    for candidate in candidates:
        name = re.sub(r"[^A-Za-z0-9_.:/-]", "_", candidate) or "output"
        if name in used:
            name = f"output_{name}"
        while name in used:
            name += "_"
        used.add(name)
        names.append(name)
    return names
