"""The Apache MXNet worker: runs one request in the MXNet environment (``convkit env create mxnet``).

Run as ``<env>/bin/python protocol.py worker.py REQUEST.json`` by ``convkit.frontends.mxnet``
(``protocol.py`` starts the process and serves ``HANDLERS``); it imports mxnet, numpy and onnx, never
convkit (the environment does not have it), and loads ``reference.py`` from its own folder by path.

A model source in a request is one of:

- ``{"kind": "factory", "source": "/abs/file.py:factory" | "pkg.module:factory", "weights": PATH | null,
  "unsafe_pickle": bool, "snapshot": PATH | null}``: the factory is imported and called here (a class is
  instantiated) and must make a ``gluon.HybridBlock``, which is then given ``weights`` (``.npz`` or a
  ``save_parameters`` file; ``unsafe_pickle`` is unused, as no MXNet format is a pickle) and the weights of
  the handle's first request (``snapshot``);
- ``{"kind": "symbol", "symbol_file": "/abs/model-symbol.json", "params_file": "/abs/model-0000.params"}``:
  a saved symbol and its parameters (``HybridBlock.export`` or ``mx.model.save_checkpoint``).

Requests: ``describe``, ``run``, ``export``, ``reference_cnn``, ``train_reference_cnn`` (see each handler;
their formats are ``paddle/env/worker.py``'s).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# NOTE: why this name: protocol.py starts every worker process and registers itself under it (see its main)
import convkit_worker_protocol as protocol

WorkerFailure = protocol.WorkerFailure
load_arrays = protocol.load_arrays
save_outputs = protocol.save_outputs

# NOTE: why 13 and only 12 and 13: mx.onnx has translations for opsets 12 and 13 only, yet stamps the
# model with the installed onnx's newest opset (23 for onnx 1.18), under which its translations are invalid
# (ReduceMean lost its ``axes`` attribute in opset 18); the worker converts with the opset pinned instead.
DEFAULT_OPSET = 13
SUPPORTED_OPSETS = (12, 13)
QUIET_VARIABLE = "CONVKIT_MXNET_QUIET"
"""Set by the front end unless ``--verbose``; without it, mx.onnx logs each node it converts."""
# NOTE: why by suffix: a symbol's free variables are its inputs and its parameters alike; the parameters
# Gluon and the symbol API create end in these, so one missing from the params file is named as missing
# instead of being taken for an input.
_PARAM_SUFFIXES = (
    "weight",
    "bias",
    "gamma",
    "beta",
    "running_mean",
    "running_var",
    "moving_mean",
    "moving_var",
)


def _mx() -> Any:
    import mxnet

    return mxnet


def _mx_failure(exc: BaseException) -> str:
    """An MXNetError's message without what MXNet wraps it in: a ``Traceback`` header, C++ source lines and
    the ``Check failed: <condition>`` of the check that raised it."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    skipped = ("Traceback (most recent call last)", "Stack trace", "[bt]", "File ")
    useful = [line for line in lines if not line.startswith(skipped)]
    if not useful:
        return type(exc).__name__
    text = useful[0].removeprefix("MXNetError: ")
    if text.startswith("Check failed:"):
        text = text.rsplit(" : ", 1)[-1] if " : " in text else text.rsplit(": ", 1)[-1]
    return text


# ============================================================================================== models
class Loaded:
    """A model ready to call: a HybridBlock (factories) or a symbol with its parameters (saved models)."""

    def __init__(
        self,
        names: list[str] | None,
        block: Any = None,
        symbol: Any = None,
        params: dict[str, Any] | None = None,
        snapshot: str | None = None,
    ) -> None:
        self.names = names
        self.block = block
        self.symbol = symbol
        self.params = params or {}
        self.snapshot = snapshot


def _load(source: Mapping[str, Any]) -> Loaded:
    if source["kind"] == "symbol":
        return _load_symbol(source["symbol_file"], source["params_file"])
    mx = _mx()
    block = protocol.call_factory(source["source"])
    if not isinstance(block, mx.gluon.HybridBlock):
        kind = "a gluon.Block, which MXNet cannot trace" if isinstance(block, mx.gluon.Block) else "no block"
        raise WorkerFailure(
            f"{source['source']} made a {type(block).__name__} ({kind}), not a gluon.HybridBlock",
            "point at a function or class that returns a gluon.HybridBlock (hybrid_forward(self, F, x))",
            "load",
        )
    params = block.collect_params()
    fresh = [name for name, param in params.items() if param._data is None and not param._deferred_init]
    if fresh and not source.get("weights"):
        raise WorkerFailure(
            f"{source['source']} made a block whose parameters are not initialized ({', '.join(fresh[:4])})",
            "call block.initialize() (or block.load_parameters(...)) in the factory, or give --weights",
            "load",
        )
    if fresh:
        params.initialize(ctx=mx.cpu())
    if source.get("weights"):
        _load_weights(block, source["weights"])
    snapshot = source.get("snapshot")
    if snapshot and os.path.isfile(snapshot):
        _set_parameters(block, load_arrays(snapshot))
    return Loaded(_forward_names(block), block=block, snapshot=snapshot)


def _structured(block: Any) -> dict[str, Any]:
    """The block's parameters by attribute path (``fc1.weight``), the names ``save_parameters`` writes."""
    return dict(block._collect_params_with_prefix())


def _set_parameters(block: Any, arrays: Mapping[str, Any]) -> None:
    mx = _mx()
    for name, param in _structured(block).items():
        if name in arrays:
            param.set_data(mx.nd.array(arrays[name], dtype=param.dtype))


def _load_weights(block: Any, path: str) -> None:
    """``--weights``: an ``.npz`` keyed by the block's parameter paths (``fc1.weight``), or a ``.params`` file
    of ``save_parameters`` (MXNet's own array format, which runs no code when read)."""
    mx = _mx()
    file = Path(path)
    if not file.is_file():
        raise WorkerFailure(f"weights file {file} does not exist", "check --weights", "input")
    try:
        if file.suffix == ".npz":
            state = load_arrays(str(file))
        elif file.suffix == ".params":
            state = {key: value.asnumpy() for key, value in mx.nd.load(str(file)).items()}
        else:
            raise WorkerFailure(
                f"{file} is neither an .npz nor an MXNet .params file",
                "save the weights with np.savez(path, **{k: p.data().asnumpy() for k, p in "
                "block._collect_params_with_prefix().items()}) or block.save_parameters(path)",
                "input",
            )
    except WorkerFailure:
        raise
    except Exception as exc:
        raise WorkerFailure(f"cannot read {file}: {_mx_failure(exc)}", kind="load") from exc
    own = _structured(block)
    protocol.check_weights_fit(
        file,
        {key: tuple(value.shape or ()) for key, value in own.items()},
        {key: tuple(value.shape) for key, value in state.items()},
        "key the arrays by the block's parameter paths (fc1.weight), as save_parameters does",
        _fits,
    )
    _set_parameters(block, state)


def _fits(shape: tuple[int, ...], declared: tuple[int, ...]) -> bool:
    """``shape`` fits a parameter declared ``declared`` (0: a size Gluon infers at the first call)."""
    return len(shape) == len(declared) and all(d in (0, s) for s, d in zip(shape, declared, strict=True))


def _save_snapshot(loaded: Loaded) -> None:
    """Give every request on one handle the same weights: the first one saves the block's parameters to
    ``snapshot`` (after its first call, when Gluon's deferred shapes are known), later ones load them.

    NOTE: why: each request calls the factory anew, in a new process; a factory that does not seed its
    initialisation would otherwise make other weights for the export than for the reference run.
    """
    if loaded.block is None or not loaded.snapshot or os.path.isfile(loaded.snapshot):
        return
    import numpy as np

    state = {name: param.data().asnumpy() for name, param in _structured(loaded.block).items()}
    partial = f"{loaded.snapshot}.{os.getpid()}.npz"
    np.savez(partial, **state)
    os.replace(partial, loaded.snapshot)


def _forward_names(block: Any) -> list[str] | None:
    """``hybrid_forward``'s data parameters (after ``F``, without the block's own parameters, which Gluon
    passes by keyword), or ``None`` when it takes ``*args``."""
    try:
        parameters = list(inspect.signature(block.hybrid_forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in parameters[1:] if p.kind in positional and p.default is p.empty]
    return [name for name in names if name not in block._reg_params]


def _load_symbol(symbol_file: str, params_file: str) -> Loaded:
    """A saved symbol and its parameters; the symbol's free variables that the file does not hold are its
    inputs (less the label a training output like ``SoftmaxOutput`` adds, as mx.onnx also skips it)."""
    mx = _mx()
    try:
        symbol = mx.sym.load(symbol_file)
    except Exception as exc:
        raise WorkerFailure(
            f"cannot read the MXNet symbol file {symbol_file}: {_mx_failure(exc)}",
            "give the -symbol.json that HybridBlock.export or mx.model.save_checkpoint wrote",
            "load",
        ) from exc
    try:
        saved = mx.nd.load(params_file)
    except Exception as exc:
        raise WorkerFailure(
            f"cannot read the MXNet parameters {params_file}: {_mx_failure(exc)}",
            "give the .params file saved together with the symbol",
            "load",
        ) from exc
    if not isinstance(saved, dict):
        raise WorkerFailure(f"{params_file} holds unnamed arrays, not a model's parameters", kind="load")
    params = {key.split(":", 1)[-1]: value for key, value in saved.items()}
    label = symbol.get_internals()[len(symbol.get_internals()) - 1].name + "_label"
    free = [name for name in symbol.list_inputs() if name not in params and name != label]
    aux = set(symbol.list_auxiliary_states())
    missing = [name for name in free if name in aux or name.endswith(_PARAM_SUFFIXES)]
    if missing:
        raise WorkerFailure(
            f"{Path(params_file).name} does not match {Path(symbol_file).name}: it lacks "
            f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}",
            "give the .params file saved together with this symbol (HybridBlock.export writes both)",
            "load",
        )
    names = [name for name in free if name not in missing]
    return Loaded(names, symbol=symbol, params=params)


def _ordered(loaded: Loaded, names: list[str], what: str) -> list[str]:
    """``names`` in the model's call order, checked against the names it takes."""
    return list(protocol.ordered_names(loaded.names, names, what))


def _flatten(value: Any) -> list[Any]:
    mx = _mx()
    if isinstance(value, mx.nd.NDArray):
        return [value.asnumpy()]
    if isinstance(value, list | tuple):
        return [array for item in value for array in _flatten(item)]
    if value is None:
        return []
    raise WorkerFailure(f"the model returned a {type(value).__name__}, not NDArrays", kind="data")


def _run(loaded: Loaded, inputs: Mapping[str, Any], what: str) -> list[Any]:
    """The model's outputs on ``inputs``, computed by MXNet (imperatively for blocks, by binding the saved
    symbol otherwise), in inference mode (no dropout)."""
    mx = _mx()
    order = _ordered(loaded, list(inputs), what)
    arrays = {name: mx.nd.array(inputs[name], dtype=inputs[name].dtype) for name in order}
    try:
        if loaded.block is not None:
            outputs = _flatten(loaded.block(*[arrays[name] for name in order]))
            _save_snapshot(loaded)
            return outputs
        symbol = loaded.symbol
        shapes, _, _ = symbol.infer_shape(**{name: value.shape for name, value in arrays.items()})
        args = {}
        for name, shape in zip(symbol.list_arguments(), shapes, strict=True):
            # NOTE: why zeros for the rest: what is neither a parameter nor an input is the label of a
            # training output (SoftmaxOutput), which bind wants and inference never reads.
            args[name] = arrays.get(name, loaded.params.get(name, mx.nd.zeros(shape)))
        aux = {name: loaded.params[name] for name in symbol.list_auxiliary_states()}
        executor = symbol.bind(mx.cpu(), args, grad_req="null", aux_states=aux)
        return _flatten(executor.forward(is_train=False))
    except mx.base.MXNetError as exc:
        raise WorkerFailure(
            f"MXNet could not run the model: {_mx_failure(exc)}",
            "check the input shapes and dtypes (--input NAME:DIMS[:DTYPE]) and that the parameters fit",
            "data",
        ) from exc


# ============================================================================================ handlers
def describe(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source`` -> ``{"input_names": [...] | null, "input_specs": null}`` (MXNet saves no input shapes)."""
    loaded = _load(request["source"])
    return {"input_names": loaded.names, "input_specs": None}


def run(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source``, ``inputs`` (.npz) -> ``outputs`` (.npz, ``output_0`` ...)."""
    loaded = _load(request["source"])
    outputs = _run(loaded, load_arrays(request["inputs"]), "in the data")
    save_outputs(request["outputs"], outputs)
    return {"outputs": len(outputs)}


def _trace(loaded: Loaded, order: list[str]) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """A block's symbol (its inputs named ``order``), its parameters by MXNet name, and MXNet name ->
    parameter path (``fc1.weight``, what the ONNX initializers are renamed to)."""
    mx = _mx()
    try:
        traced = loaded.block(*[mx.sym.var(name) for name in order])
    except Exception as exc:
        raise WorkerFailure(
            f"MXNet could not trace the block to a symbol: {_mx_failure(exc)}",
            "hybrid_forward must compute with F (mx.sym when traced), not with NDArray methods or numpy",
            "export",
        ) from exc
    symbol = mx.sym.Group(list(traced)) if isinstance(traced, list | tuple) else traced
    structured = _structured(loaded.block)
    params = {param.name: param.data() for param in structured.values()}
    return symbol, params, {param.name: path for path, param in structured.items()}


def _without_training_label(
    symbol: Any, params: Mapping[str, Any], example: Mapping[str, Any], inputs: list[str]
) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """``symbol`` with the label of its training output (``SoftmaxOutput``'s ``softmax_label``) renamed,
    and the renamed labels' shapes at the example's.

    NOTE: why: mx.onnx 1.9.1 skips the label's node but not its index, so converting ``SoftmaxOutput`` (the
    head of every Module-API checkpoint) fails with an IndexError; under another name the label converts as an
    input that no ONNX node reads, which ``_tidy`` then drops.
    """
    mx = _mx()
    labels = [name for name in symbol.list_arguments() if name not in params and name not in inputs]
    if not labels:
        return symbol, {}
    renamed = {name: f"{name}_unused" for name in labels}
    shapes, _, _ = symbol.infer_shape(**{name: example[name].shape for name in inputs})
    found = dict(zip(symbol.list_arguments(), shapes, strict=True))
    symbol = symbol(**{name: mx.sym.var(new) for name, new in renamed.items()})
    return symbol, {renamed[name]: tuple(found[name]) for name in labels}


def _convert(
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
            f"mx.onnx could not convert the model: {_mx_failure(exc)}",
            "--verbose shows MXNet's log",
            "export",
        ) from exc
    opsets = [helper.make_opsetid("", opset)]
    # NOTE: why the lowest IR version: make_model writes onnx 1.18's (11), which older runtimes cannot read,
    # though nothing in an opset-13 model needs more than IR 7.
    return helper.make_model(
        graph,
        producer_name="mx.onnx",
        producer_version=str(_mx().__version__),
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
    )


def _tidy(model: Any, specs: list[dict[str, Any]]) -> None:
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


def export(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """Export ``source`` to ONNX with mx.onnx.

    Request: ``source``, ``specs`` (``[{"name", "dims", "dtype"}]``, string dims symbolic), ``opset`` (or
    null: 13), ``onnx`` (where to write), ``example`` (.npz), ``reference`` (.npz: the model's outputs on the
    example, written here).

    Result: ``input_names`` (in order), ``param_names`` (MXNet parameter name -> parameter path, for
    factories), ``outputs`` (how many), ``exporter_version`` (MXNet's: mx.onnx ships with it).
    """
    import onnx

    mx = _mx()
    opset = int(request.get("opset") or DEFAULT_OPSET)
    if opset not in SUPPORTED_OPSETS:
        raise WorkerFailure(
            f"mx.onnx converts MXNet models to ONNX opset 12 or 13 only, not {opset}",
            "use --opset 13 (the default) or 12",
            "export",
        )
    loaded = _load(request["source"])
    specs = {spec["name"]: spec for spec in request["specs"]}
    order = _ordered(loaded, list(specs), "in --input")
    example = load_arrays(request["example"])
    # NOTE: why run first: Gluon infers deferred parameter shapes at the first call, which the trace needs.
    outputs = _run(loaded, {name: example[name] for name in order}, "in the example")
    param_names: dict[str, str] = {}
    if loaded.block is not None:
        symbol, params, param_names = _trace(loaded, order)
    else:
        symbol, params = loaded.symbol, loaded.params
    model = _convert(symbol, params, [specs[name] for name in order], example, opset)
    _tidy(model, [specs[name] for name in order])
    onnx.save(model, request["onnx"])
    save_outputs(request["reference"], outputs)
    return {
        "input_names": order,
        "param_names": param_names,
        "outputs": len(outputs),
        "exporter_version": str(mx.__version__),
    }


def _reference_module() -> Any:
    return protocol.load_sibling("reference")


def reference_cnn(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``weights`` (canonical .npz), ``folder`` -> the reference CNN saved there as a symbol and parameters
    (``model-symbol.json``, ``model-0000.params``, as ``HybridBlock.export`` writes them, input ``x``).

    Result: ``source``, the ``symbol`` source spec that later requests load.
    """
    mx = _mx()
    reference = _reference_module()
    try:
        model = reference.build_reference_cnn(load_arrays(request["weights"]))
    except ValueError as exc:
        raise WorkerFailure(str(exc), kind="data") from exc
    # NOTE: why not HybridBlock.export: it names the input "data"; the reference CNN's input is "x".
    symbol = model(mx.sym.var("x"))
    prefix = os.path.join(request["folder"], "model")
    symbol.save(f"{prefix}-symbol.json")
    mx.nd.save(f"{prefix}-0000.params", {f"arg:{p.name}": p.data() for p in model.collect_params().values()})
    return {
        "source": {
            "kind": "symbol",
            "symbol_file": f"{prefix}-symbol.json",
            "params_file": f"{prefix}-0000.params",
        }
    }


def train_reference_cnn(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """Train the reference CNN the MXNet way (``reference.py``); the request is
    ``protocol.train_reference_cnn``'s."""
    return protocol.train_reference_cnn(request, channel, _reference_module().train_reference_cnn)


HANDLERS = {
    "describe": describe,
    "run": run,
    "export": export,
    "reference_cnn": reference_cnn,
    "train_reference_cnn": train_reference_cnn,
}
