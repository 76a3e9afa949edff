"""The PaddlePaddle worker: runs one request in the PaddlePaddle environment (``convkit env create paddle``).

Run as ``<env>/bin/python protocol.py worker.py REQUEST.json`` by ``convkit.frontends.paddle``
(``protocol.py`` starts the process and serves ``HANDLERS``); it imports paddle, paddle2onnx, numpy and
onnx, never convkit (the environment does not have it), and loads ``reference.py`` from its own
folder by path.

A model source in a request is one of:

- ``{"kind": "factory", "source": "/abs/file.py:factory" | "pkg.module:factory", "weights": PATH | null,
  "unsafe_pickle": bool, "snapshot": PATH | null}``: the factory is imported and called here (a class is
  instantiated), then given the weights of the handle's first request (``snapshot``);
- ``{"kind": "inference", "prefix": "/abs/dir/model", "model_file": ..., "params_file": ...}``: a saved
  inference model (``paddle.jit.save``: ``model.json`` or ``model.pdmodel`` + ``model.pdiparams``).

Requests: ``describe``, ``run``, ``export``, ``reference_cnn``, ``train_reference_cnn`` (see each handler).
"""

from __future__ import annotations

import inspect
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# NOTE: why this name: protocol.py starts every worker process and registers itself under it (see its main)
import convkit_worker_protocol as protocol

WorkerFailure = protocol.WorkerFailure

DEFAULT_OPSET = 17
_DTYPES = {
    "FP16": "float16",
    "FLOAT16": "float16",
    "FP32": "float32",
    "FLOAT32": "float32",
    "FP64": "float64",
    "FLOAT64": "float64",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


load_arrays = protocol.load_arrays
save_outputs = protocol.save_outputs


# ============================================================================================== models
def _load_weights(layer: Any, path: str, unsafe_pickle: bool) -> None:
    """``.npz`` (keys = ``state_dict`` names) safely; ``.pdparams`` (a pickle) only with ``unsafe_pickle``."""
    import paddle

    file = Path(path)
    if not file.is_file():
        raise WorkerFailure(f"weights file {file} does not exist", "check --weights", "input")
    if file.suffix == ".npz":
        try:
            state = load_arrays(str(file))
        except Exception as exc:
            raise WorkerFailure(f"cannot read {file}: {protocol.first_line(exc)}", kind="load") from exc
    elif not unsafe_pickle:
        raise WorkerFailure(
            f"{file} is a Paddle checkpoint, which paddle.load reads by unpickling (it can run code)",
            "save the state dict as .npz (np.savez(path, **{k: v.numpy() for k, v in "
            "layer.state_dict().items()})), or pass --unsafe-allow-pickle if you trust the file",
            "unsafe",
        )
    else:
        try:
            state = paddle.load(str(file))
        except Exception as exc:
            raise WorkerFailure(f"cannot load {file}: {protocol.first_line(exc)}", kind="load") from exc
    own = {key: tuple(value.shape) for key, value in layer.state_dict().items()}
    protocol.check_weights_fit(file, own, {key: tuple(value.shape) for key, value in state.items()}, None)
    layer.set_state_dict({k: paddle.to_tensor(v) if not hasattr(v, "place") else v for k, v in state.items()})


def _forward_names(layer: Any) -> list[str] | None:
    """``forward``'s required positional parameters, or ``None`` when it takes ``*args``."""
    try:
        parameters = inspect.signature(layer.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in parameters if p.kind in positional and p.default is p.empty]


class Loaded:
    """A model ready to call: the layer, its input names in call order, and its spec when saved."""

    def __init__(self, layer: Any, names: list[str] | None, specs: list[dict[str, Any]] | None) -> None:
        self.layer = layer
        self.names = names
        self.specs = specs


def _load(source: Mapping[str, Any]) -> Loaded:
    if source["kind"] == "inference" and source["model_file"].endswith(".pdmodel"):
        # NOTE: why: a .pdmodel holds a program of the old IR, which paddle.jit.load reads only with PIR off;
        # the flag is read when paddle is imported, so it is set first (paddle2onnx converts either IR).
        os.environ["FLAGS_enable_pir_api"] = "0"  # noqa: SIM112 - Paddle reads this exact name
    import paddle

    if source["kind"] == "inference":
        try:
            layer = paddle.jit.load(source["prefix"])
        except Exception as exc:
            raise WorkerFailure(
                f"cannot load the Paddle inference model {source['model_file']}: {protocol.first_line(exc)}",
                "is it complete, with its .pdiparams beside it, and saved by a compatible Paddle?",
                "load",
            ) from exc
        layer.eval()
        specs = [_spec_of(spec) for spec in layer._input_spec()]
        return Loaded(layer, [spec["name"] for spec in specs], specs)
    layer = protocol.call_factory(source["source"])
    if not isinstance(layer, paddle.nn.Layer):
        raise WorkerFailure(
            f"{source['source']} made a {type(layer).__name__}, not a paddle.nn.Layer",
            "point at a function or class that returns a paddle.nn.Layer",
            "load",
        )
    if source.get("weights"):
        _load_weights(layer, source["weights"], bool(source.get("unsafe_pickle")))
    if source.get("snapshot"):
        _pin_weights(layer, source["snapshot"])
    layer.eval()
    return Loaded(layer, _forward_names(layer), None)


def _pin_weights(layer: Any, snapshot: str) -> None:
    """Give every request on one handle the same weights: the first saves the layer's ``state_dict`` to
    ``snapshot``, later ones load it.

    NOTE: why: each request calls the factory anew, in a new process; a factory that does not seed its
    initialisation would otherwise make other weights for the export than for the reference run.
    """
    import numpy as np
    import paddle

    if os.path.isfile(snapshot):
        layer.set_state_dict({k: paddle.to_tensor(v) for k, v in load_arrays(snapshot).items()})
        return
    state = {key: np.asarray(value.numpy()) for key, value in layer.state_dict().items()}
    partial = f"{snapshot}.{os.getpid()}.npz"
    np.savez(partial, **state)
    os.replace(partial, snapshot)


def _spec_of(spec: Any) -> dict[str, Any]:
    """A saved model's ``InputSpec`` as ``{"name", "dims", "dtype"}``; unknown dims (-1) become ``None``."""
    dtype_name = str(spec.dtype).rsplit(".", 1)[-1].split(":")[0].upper()
    dims = [None if (d is None or int(d) < 0) else int(d) for d in spec.shape]
    return {"name": spec.name, "dims": dims, "dtype": _DTYPES.get(dtype_name, dtype_name.lower())}


def _ordered(loaded: Loaded, names: list[str], what: str) -> list[str]:
    """``names`` in the model's call order (forward's parameters), checked against the names it takes."""
    return list(protocol.ordered_names(loaded.names, names, what))


def _flatten(value: Any) -> list[Any]:
    import paddle

    if isinstance(value, paddle.Tensor):
        return [value.numpy()]
    if isinstance(value, list | tuple):
        return [array for item in value for array in _flatten(item)]
    if isinstance(value, Mapping):
        return [array for item in value.values() for array in _flatten(item)]
    if value is None:
        return []
    raise WorkerFailure(f"the model returned a {type(value).__name__}, not tensors", kind="data")


def _run(loaded: Loaded, inputs: Mapping[str, Any], what: str) -> list[Any]:
    import paddle

    order = _ordered(loaded, list(inputs), what)
    tensors = [paddle.to_tensor(inputs[name]) for name in order]
    with paddle.no_grad():
        return _flatten(loaded.layer(*tensors))


# ============================================================================================ handlers
def describe(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source`` -> ``{"input_names": [...] | null, "input_specs": [...] | null}`` (specs: saved models)."""
    loaded = _load(request["source"])
    return {"input_names": loaded.names, "input_specs": loaded.specs}


def run(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source``, ``inputs`` (.npz) -> ``outputs`` (.npz, ``output_0`` ...): the model run eagerly."""
    loaded = _load(request["source"])
    outputs = _run(loaded, load_arrays(request["inputs"]), "in the data")
    save_outputs(request["outputs"], outputs)
    return {"outputs": len(outputs)}


class _Paddle2OnnxFailed(Exception):
    pass


def _paddle2onnx(model_file: str, params_file: str, opset: int) -> bytes:
    """Convert a saved inference model with paddle2onnx, without its Polygraphy constant folding.

    NOTE: why optimize_tool="None": Polygraphy folds constants with onnxruntime, which it pip-installs at
    export time when absent; onnxruntime folds them at load anyway. NOTE: why patch its logger:
    paddle2onnx reports a failed conversion by logging and calling ``sys.exit(-1)``; the message is the
    only account of what failed, and the exit must not end the worker without an answer.
    """
    from paddle2onnx import convert

    logger = convert.logging
    original = logger.error

    def fail(message: Any = "", *args: Any, **kwargs: Any) -> None:
        if message:
            raise _Paddle2OnnxFailed(str(message))

    logger.error = staticmethod(fail)
    try:
        model = convert.export(
            model_file,
            params_file,
            save_file=None,
            opset_version=opset,
            auto_upgrade_opset=True,
            enable_onnx_checker=True,
            optimize_tool="None",
        )
    except _Paddle2OnnxFailed as exc:
        text = str(exc).removeprefix("Failed to convert PaddlePaddle model: ").rstrip(".")
        raise WorkerFailure(
            f"paddle2onnx could not convert the model: {text}",
            "try another --opset; --verbose shows paddle2onnx's log",
            "export",
        ) from exc
    finally:
        logger.error = original
    if not isinstance(model, bytes) or not model:
        raise WorkerFailure("paddle2onnx wrote no model", "--verbose shows paddle2onnx's log", "export")
    return model


def _input_spec(spec: Mapping[str, Any]) -> Any:
    import paddle

    shape = [None if isinstance(d, str) else int(d) for d in spec["dims"]]
    return paddle.static.InputSpec(shape, spec["dtype"], spec["name"])


def _save_inference(layer: Any, specs: list[Any], folder: str) -> tuple[str, str]:
    """``paddle.jit.save`` to ``folder/model``; returns the program and parameter files."""
    import paddle

    prefix = os.path.join(folder, "model")
    try:
        paddle.jit.save(layer, prefix, input_spec=specs)
    except Exception as exc:
        raise WorkerFailure(
            f"paddle.jit.save could not convert the model to a static program: {protocol.first_line(exc)}",
            "the model must run under paddle.jit.to_static (no Python control flow on tensor values)",
            "export",
        ) from exc
    program = next((prefix + s for s in (".json", ".pdmodel") if os.path.isfile(prefix + s)), None)
    if program is None:
        raise WorkerFailure("paddle.jit.save wrote no program file", kind="export")
    return program, prefix + ".pdiparams"


def export(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """Export ``source`` to ONNX.

    Request: ``source``, ``specs`` (``[{"name", "dims", "dtype"}]``, string dims symbolic), ``opset`` (or
    null: 17), ``onnx`` (where to write; the core renames and moves it), ``example`` (.npz),
    ``reference`` (.npz: the model's outputs on the example, written here).

    Result: ``input_names`` (the ONNX inputs, in order), ``param_names`` (program parameter name ->
    ``state_dict`` name, for factories), ``outputs`` (how many), ``exporter_version``.
    """
    source = request["source"]
    loaded = _load(source)
    import paddle2onnx

    specs = {spec["name"]: spec for spec in request["specs"]}
    order = _ordered(loaded, list(specs), "in --input")
    opset = int(request.get("opset") or DEFAULT_OPSET)
    param_names: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="convkit-paddle-export-") as folder:
        if source["kind"] == "inference":
            program, params = source["model_file"], source["params_file"]
        else:
            program, params = _save_inference(loaded.layer, [_input_spec(specs[n]) for n in order], folder)
            param_names = {
                value.name: key for key, value in loaded.layer.state_dict().items() if hasattr(value, "name")
            }
        model = _paddle2onnx(program, params, opset)
    Path(request["onnx"]).write_bytes(model)
    example = load_arrays(request["example"])
    outputs = _run(loaded, {name: example[name] for name in order}, "in the example")
    save_outputs(request["reference"], outputs)
    return {
        "input_names": order,
        "param_names": param_names,
        "outputs": len(outputs),
        "exporter_version": str(paddle2onnx.__version__),
    }


def _reference_module() -> Any:
    return protocol.load_sibling("reference")


def reference_cnn(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``weights`` (canonical .npz), ``folder`` -> the reference CNN saved there as an inference model.

    Result: ``source``, the ``inference`` source spec that later requests load.
    """
    import paddle

    reference = _reference_module()
    try:
        model = reference.build_reference_cnn(load_arrays(request["weights"]))
    except ValueError as exc:
        raise WorkerFailure(str(exc), kind="data") from exc
    spec = paddle.static.InputSpec([None, 1, 28, 28], "float32", "x")
    program, params = _save_inference(model, [spec], request["folder"])
    prefix = os.path.join(request["folder"], "model")
    return {"source": {"kind": "inference", "prefix": prefix, "model_file": program, "params_file": params}}


def train_reference_cnn(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """Train the reference CNN the Paddle way (``reference.py``); the request is
    ``protocol.train_reference_cnn``'s."""
    return protocol.train_reference_cnn(request, channel, _reference_module().train_reference_cnn)


HANDLERS = {
    "describe": describe,
    "run": run,
    "export": export,
    "reference_cnn": reference_cnn,
    "train_reference_cnn": train_reference_cnn,
}
