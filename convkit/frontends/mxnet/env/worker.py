"""The Apache MXNet worker: runs one request in the MXNet environment (``convkit env create mxnet``).

Run as ``<env>/bin/python protocol.py worker.py REQUEST.json`` by ``convkit.frontends.mxnet``
(``protocol.py`` starts the process and serves ``HANDLERS``); it imports mxnet, numpy and onnx, never
convkit (the environment does not have it), and loads ``load.py`` (loading and running a model),
``export.py`` (mx.onnx's conversion and the fixes to its output) and ``reference.py`` from its own folder
by path. This file holds the request handlers.

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

import os
from typing import Any

# NOTE: why this name: protocol.py starts every worker process and registers itself under it (see its main)
import convkit_worker_protocol as protocol

mx_load = protocol.load_sibling("load")
mx_export = protocol.load_sibling("export")
WorkerFailure = protocol.WorkerFailure
load_arrays = protocol.load_arrays
save_outputs = protocol.save_outputs


# ============================================================================================ handlers
def describe(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source`` -> ``{"input_names": [...] | null, "input_specs": null}`` (MXNet saves no input shapes)."""
    loaded = mx_load.load(request["source"])
    return {"input_names": loaded.names, "input_specs": None}


def run(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source``, ``inputs`` (.npz) -> ``outputs`` (.npz, ``output_0`` ...)."""
    loaded = mx_load.load(request["source"])
    outputs = mx_load.run(loaded, load_arrays(request["inputs"]), "in the data")
    save_outputs(request["outputs"], outputs)
    return {"outputs": len(outputs)}


def export(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """Export ``source`` to ONNX with mx.onnx.

    Request: ``source``, ``specs`` (``[{"name", "dims", "dtype"}]``, string dims symbolic), ``opset`` (or
    null: 13), ``onnx`` (where to write), ``example`` (.npz), ``reference`` (.npz: the model's outputs on the
    example, written here).

    Result: ``input_names`` (in order), ``param_names`` (MXNet parameter name -> parameter path, for
    factories), ``outputs`` (how many), ``exporter_version`` (MXNet's: mx.onnx ships with it).
    """
    import onnx

    mx = mx_load.mxnet()
    opset = int(request.get("opset") or mx_export.DEFAULT_OPSET)
    if opset not in mx_export.SUPPORTED_OPSETS:
        raise WorkerFailure(
            f"mx.onnx converts MXNet models to ONNX opset 12 or 13 only, not {opset}",
            "use --opset 13 (the default) or 12",
            "export",
        )
    loaded = mx_load.load(request["source"])
    specs = {spec["name"]: spec for spec in request["specs"]}
    order = mx_load.ordered(loaded, list(specs), "in --input")
    example = load_arrays(request["example"])
    # NOTE: why run first: Gluon infers deferred parameter shapes at the first call, which the trace needs.
    outputs = mx_load.run(loaded, {name: example[name] for name in order}, "in the example")
    param_names: dict[str, str] = {}
    if loaded.block is not None:
        symbol, params, param_names = mx_export.trace(loaded, order)
    else:
        symbol, params = loaded.symbol, loaded.params
    model = mx_export.convert(symbol, params, [specs[name] for name in order], example, opset)
    mx_export.tidy(model, [specs[name] for name in order])
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
    mx = mx_load.mxnet()
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
