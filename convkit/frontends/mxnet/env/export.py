"""The MXNet worker's export: a loaded model converted to ONNX by mx.onnx at a pinned opset (a block traced
to a symbol first), and the fixes convkit applies to mx.onnx's output (the training label it cannot skip,
the inputs and initializers it leaves over, the dims and shapes it leaves out, the stacked RNNs it
converts wrong, split by ``rnn.py``).

Runs in the MXNet environment only: it imports mxnet, numpy and onnx (inside functions), never convkit; the
worker loads it by path, and it loads ``load.py`` and ``rnn.py`` the same way.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

# NOTE: why this name: protocol.py starts every worker process and registers itself under it (see its main)
import convkit_worker_protocol as protocol

mx_load = protocol.load_sibling("load")
mx_rnn = protocol.load_sibling("rnn")
WorkerFailure = protocol.WorkerFailure

# NOTE: why 13 and only 12 and 13: mx.onnx has translations for opsets 12 and 13 only, yet stamps the
# model with the installed onnx's newest opset (23 for onnx 1.18), under which its translations are invalid
# (ReduceMean lost its ``axes`` attribute in opset 18); the worker converts with the opset pinned instead.
DEFAULT_OPSET = 13
SUPPORTED_OPSETS = (12, 13)
QUIET_VARIABLE = "CONVKIT_MXNET_QUIET"
"""Set by the front end unless ``--verbose``; without it, mx.onnx logs each node it converts."""


def trace(loaded: mx_load.Loaded, order: list[str]) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """A block's symbol (its inputs named ``order``), its parameters by MXNet name, and MXNet name ->
    parameter path (``fc1.weight``, what the ONNX initializers are renamed to)."""
    mx = mx_load.mxnet()
    try:
        traced = loaded.block(*[mx.sym.var(name) for name in order])
    except Exception as exc:
        raise WorkerFailure(
            f"MXNet could not trace the block to a symbol: {mx_load.mx_failure(exc)}",
            "hybrid_forward must compute with F (mx.sym when traced), not with NDArray methods or numpy",
            "export",
        ) from exc
    symbol = mx.sym.Group(list(traced)) if isinstance(traced, list | tuple) else traced
    structured = mx_load.structured(loaded.block)
    params = {param.name: param.data() for param in structured.values()}
    return symbol, params, {param.name: path for path, param in structured.items()}


def _without_training_label(
    symbol: Any, params: Mapping[str, Any], example: Mapping[str, Any], inputs: list[str]
) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """``symbol`` with the label of its training output (``SoftmaxOutput``'s ``softmax_label``) renamed,
    and the renamed labels' shapes at the example's.

    NOTE: why: mx.onnx 1.9.1 skips the label's node but not its index, so converting ``SoftmaxOutput`` (the
    head of every Module-API checkpoint) fails with an IndexError; under another name the label converts as an
    input that no ONNX node reads, which ``tidy`` then drops.
    """
    mx = mx_load.mxnet()
    labels = [name for name in symbol.list_arguments() if name not in params and name not in inputs]
    if not labels:
        return symbol, {}
    renamed = {name: f"{name}_unused" for name in labels}
    shapes, _, _ = symbol.infer_shape(**{name: example[name].shape for name in inputs})
    found = dict(zip(symbol.list_arguments(), shapes, strict=True))
    symbol = symbol(**{name: mx.sym.var(new) for name, new in renamed.items()})
    return symbol, {renamed[name]: tuple(found[name]) for name in labels}


def convert(
    symbol: Any, params: dict[str, Any], specs: list[dict[str, Any]], example: Mapping[str, Any], opset: int
) -> Any:
    """mx.onnx's conversion at ``opset``: shapes inferred at the example's, symbolic dims left free.

    NOTE: why not ``mx.onnx.export_model``: it converts at the installed onnx's newest opset (see
    DEFAULT_OPSET) and stamps that opset; its converter takes the opset as an argument.
    """
    import numpy as np
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    from onnx import helper

    verbose = os.environ.get(QUIET_VARIABLE) != "1"
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[mx.onnx] %(message)s")
    symbol, labels = _without_training_label(symbol, params, example, [spec["name"] for spec in specs])
    known = {name: tuple(value.shape) for name, value in params.items()}
    known.update({spec["name"]: tuple(example[spec["name"]].shape) for spec in specs}, **labels)
    symbol = mx_rnn.split_stacked_rnns(symbol, known)
    used = set(symbol.list_inputs())
    weights = {name: value for name, value in params.items() if name in used}
    by_name = {spec["name"]: spec for spec in specs}
    # NOTE: why in graph order: mx.onnx pairs the shapes with the graph's input nodes in the order the graph
    # meets them, which need not be the call order.
    graph_inputs = [
        node["name"]
        for node in json.loads(symbol.tojson())["nodes"]
        if node["op"] == "null" and node["name"] not in weights
    ]
    shapes, dynamic, types = [], [], []
    for name in graph_inputs:
        if name in labels:
            shapes.append(labels[name])
            dynamic.append(labels[name])
            types.append(helper.np_dtype_to_tensor_dtype(np.dtype("float32")))
            continue
        spec = by_name[name]
        shapes.append(tuple(example[name].shape))
        dynamic.append(tuple(None if isinstance(d, str) else int(d) for d in spec["dims"]))
        types.append(helper.np_dtype_to_tensor_dtype(np.dtype(spec["dtype"])))
    try:
        graph = MXNetGraph().create_onnx_graph_proto(
            symbol,
            weights,
            shapes,
            types,
            verbose=verbose,
            opset_version=opset,
            dynamic=True,
            dynamic_input_shapes=dynamic,
        )
    except AttributeError as exc:
        op = str(exc).removeprefix("No conversion function registered for op type ").removesuffix(" yet.")
        if op == str(exc):
            raise
        raise WorkerFailure(
            f"mx.onnx cannot convert the MXNet operator {op} to ONNX (no translation for opset {opset})",
            "rewrite that part of the model with operators mx.onnx supports, or give the layer another form",
            "export",
        ) from exc
    except Exception as exc:
        raise WorkerFailure(
            f"mx.onnx could not convert the model: {mx_load.mx_failure(exc)}",
            "--verbose shows MXNet's log",
            "export",
        ) from exc
    opsets = [helper.make_opsetid("", opset)]
    # NOTE: why the lowest IR version: make_model writes onnx 1.18's (11), which older runtimes cannot read,
    # though nothing in an opset-13 model needs more than IR 7.
    return helper.make_model(
        graph,
        producer_name="mx.onnx",
        producer_version=str(mx_load.mxnet().__version__),
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
    )


def tidy(model: Any, specs: list[dict[str, Any]]) -> None:
    """Drop what mx.onnx leaves that a tidy model lacks, and add what it leaves out.

    Dropped: weights listed as graph inputs too (which keeps onnxruntime from treating them as constants),
    inputs no node reads (a training label) and initializers no node uses. Added: the inputs' symbolic dims
    named after ``specs`` and the outputs' shapes from onnx's shape inference (mx.onnx declares every output
    dim unknown once any input dim is dynamic).
    """
    import onnx

    graph = model.graph
    weights = {tensor.name for tensor in graph.initializer}
    read = {name for node in graph.node for name in node.input}
    wanted = {spec["name"] for spec in specs}
    inputs = [value for value in graph.input if value.name in wanted or value.name in read - weights]
    del graph.input[:]
    graph.input.extend(inputs)
    used = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    by_name = {spec["name"]: spec for spec in specs}
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        for dim, want in zip(dims, by_name.get(value.name, {}).get("dims", []), strict=False):
            if isinstance(want, str) and not dim.HasField("dim_value"):
                dim.dim_param = want
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return  # NOTE: why quietly: the shapes are a courtesy; onnxruntime checks the model when it loads
    shapes = {value.name: value.type for value in inferred.graph.output}
    for value in graph.output:
        if value.name in shapes and shapes[value.name].tensor_type.HasField("shape"):
            value.type.CopyFrom(shapes[value.name])
