"""Graph rewrites that keep a model's function exactly and make it cheaper to run or to quantize.

Each rewrite edits an ``onnx.ModelProto`` in place and returns the names of the nodes it changed; its tests
run onnxruntime before and after and require identical outputs.
"""

from __future__ import annotations

from typing import Any

# NOTE: why only these: each is monotone non-decreasing, so max(f(a), f(b)) == f(max(a, b)) exactly and a
# MaxPool may run before it as well as after it.
MONOTONE_ACTIVATIONS = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh"}


def _consumers(model: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def pool_before_activation(model: Any, producers: set[str] | None = None) -> list[str]:
    """Rewrite ``act -> MaxPool`` into ``MaxPool -> act`` (the activation then runs on the pooled, smaller
    tensor), where the activation is monotone and its only consumer is the MaxPool.

    Args:
        model: the ``onnx.ModelProto`` to edit in place.
        producers: only activations fed by these node names (None: any).

    Returns:
        The names of the MaxPool nodes moved.

    NOTE: why this matters for int8: onnxruntime moves a QuantizeLinear up through a MaxPool, so a float32
    ``Conv -> Relu -> MaxPool`` ahead of a quantized layer ended in a uint8 MaxPool on the slow NCHW kernel
    (1.8 ms for the reference CNN's first pool at batch 64, against 0.17 ms in float32). With the pool first,
    the quantization point follows the activation and the float32 chain keeps its fused kernels.
    """
    graph_outputs = {value.name for value in model.graph.output}
    producer_of = {out: node for node in model.graph.node for out in node.output}
    consumers = _consumers(model)
    nodes = list(model.graph.node)
    moved = []
    for act in list(nodes):
        if act.op_type not in MONOTONE_ACTIVATIONS or len(act.output) != 1:
            continue
        source = producer_of.get(act.input[0])
        if producers is not None and (source is None or source.name not in producers):
            continue
        after = consumers.get(act.output[0], [])
        if len(after) != 1 or act.output[0] in graph_outputs:
            continue
        pool = after[0]
        if pool.op_type != "MaxPool" or len([o for o in pool.output if o]) != 1:
            continue
        inner, outer = act.input[0], pool.output[0]
        middle = act.output[0]
        pool.input[0], pool.output[0] = inner, middle
        act.input[0], act.output[0] = middle, outer
        i, j = nodes.index(act), nodes.index(pool)
        nodes[i], nodes[j] = nodes[j], nodes[i]
        moved.append(pool.name or pool.output[0])
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        # the shapes recorded for the renamed values no longer hold; shape inference recomputes them
        stale = {node.output[0] for node in nodes if node.op_type == "MaxPool"}
        kept = [v for v in model.graph.value_info if v.name not in stale]
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept)
    return moved
