"""The Keras worker: runs one request with Keras 3 on its JAX or PyTorch backend.

Run as ``python protocol.py worker.py REQUEST.json`` by ``convkit.frontends.keras_backend`` with
the core's own interpreter and ``KERAS_BACKEND`` set in its environment (``protocol.py`` starts the process
and serves ``HANDLERS``). NOTE: why a process of its own: Keras picks its backend once per process, when it
is first imported, and the core process uses Keras on TensorFlow. It imports keras, numpy and the backend,
never convkit.

A model source in a request is one of:

- ``{"kind": "file", "path": "/abs/model.keras", "unsafe_pickle": bool, "weights": PATH | null}``: a
  ``.keras`` file, loaded with ``safe_mode`` unless ``unsafe_pickle``;
- ``{"kind": "factory", "source": "/abs/file.py:factory" | "pkg.module:factory", "weights": PATH | null,
  "snapshot": PATH | null}``: the factory is imported and called here (a class is instantiated), then given
  the weights of the handle's first request (``snapshot``, a ``.weights.h5``).

Requests: ``describe``, ``run``, ``export`` (see each handler).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

# NOTE: why this name: protocol.py starts every worker process and registers itself under it (see its main)
import convkit_worker_protocol as protocol

WorkerFailure = protocol.WorkerFailure

EXPORTERS = {"jax": "jax2onnx", "torch": "torch.onnx (TorchScript)"}


load_arrays = protocol.load_arrays
save_outputs = protocol.save_outputs


def _keras() -> Any:
    import keras

    backend = keras.config.backend()
    wanted = os.environ.get("KERAS_BACKEND", backend)
    if backend != wanted:
        raise WorkerFailure(f"Keras runs on its {backend} backend, not {wanted}", kind="load")
    return keras


def _load(source: Mapping[str, Any]) -> Any:
    keras = _keras()
    if source["kind"] == "file":
        path = source["path"]
        try:
            # NOTE: why safe_mode: a Lambda layer stores marshalled Python bytecode that Keras would run
            model = keras.saving.load_model(path, compile=False, safe_mode=not source.get("unsafe_pickle"))
        except Exception as exc:
            text = str(exc)
            if "safe_mode" in text or "unsafe_deserialization" in text:
                raise WorkerFailure(
                    f"{path} holds Python code (a Lambda layer) that Keras runs when loading it",
                    "if you trust the file, pass --unsafe-allow-pickle",
                    "unsafe",
                ) from exc
            raise WorkerFailure(
                f"cannot load {path} with Keras: {protocol.first_line(exc)}",
                "is it a complete .keras file saved by Keras 3?",
                "load",
            ) from exc
    else:
        model = protocol.call_factory(source["source"])
    if not isinstance(model, keras.Model):
        raise WorkerFailure(
            f"{source.get('source') or source.get('path')} made a {type(model).__name__}, not a keras.Model",
            "point at a function or class that returns a keras.Model",
            "load",
        )
    return model


def _weights(model: Any, source: Mapping[str, Any]) -> None:
    """Load ``--weights`` and pin a factory's weights to the handle's first request; the model is built.

    NOTE: why the snapshot: each request calls the factory anew, in a new process; a factory that does not
    seed its initialisation would otherwise make other weights for the export than for the reference run.
    """
    if source.get("weights"):
        try:
            model.load_weights(source["weights"])
        except Exception as exc:
            raise WorkerFailure(
                f"the weights in {source['weights']} do not fit the model: {protocol.first_line(exc)}",
                "give a .weights.h5 file saved by model.save_weights",
                "load",
            ) from exc
    snapshot = source.get("snapshot")
    if not snapshot:
        return
    if os.path.isfile(snapshot):
        model.load_weights(snapshot)
        return
    partial = f"{snapshot}.{os.getpid()}.weights.h5"
    model.save_weights(partial)
    os.replace(partial, snapshot)


def _input_names(model: Any) -> list[str] | None:
    try:
        inputs = model.inputs
    except Exception:
        return None
    if not inputs:
        return None
    return [str(getattr(t, "name", "")).split(":")[0] for t in inputs]


def _ordered(model: Any, names: list[str], what: str) -> list[str]:
    """``names`` in the model's input order when its inputs are named so; else as given."""
    known = _input_names(model)
    if known is not None and sorted(known) == sorted(names):
        return known
    if known is not None and len(known) != len(names):
        raise WorkerFailure(
            f"the model takes {len(known)} input(s) ({', '.join(known)}), not {len(names)} ({what})",
            "name the inputs after the model's: --input NAME:DIMS",
            "data",
        )
    return names


def _flatten(value: Any) -> list[Any]:
    import numpy as np

    keras = sys.modules["keras"]
    if isinstance(value, list | tuple):
        return [array for item in value for array in _flatten(item)]
    if isinstance(value, Mapping):
        return [array for key in sorted(value) for array in _flatten(value[key])]
    if value is None:
        return []
    try:
        return [np.asarray(keras.ops.convert_to_numpy(value))]
    except Exception as exc:
        raise WorkerFailure(f"the model returned a {type(value).__name__}, not tensors", kind="data") from exc


def _call(model: Any, inputs: Mapping[str, Any], order: list[str]) -> Any:
    arrays = [inputs[name] for name in order]
    return model(arrays[0] if len(arrays) == 1 else arrays, training=False)


def _run(model: Any, inputs: Mapping[str, Any], what: str) -> list[Any]:
    order = _ordered(model, list(inputs), what)
    try:
        return _flatten(_call(model, inputs, order))
    except WorkerFailure:
        raise
    except Exception as exc:
        raise WorkerFailure(
            f"the model failed on the inputs: {protocol.first_line(exc)}", kind="data"
        ) from exc


def _prepared(source: Mapping[str, Any], inputs: Mapping[str, Any], what: str) -> tuple[Any, list[Any]]:
    """The model, called once on ``inputs`` (built; JAX's export needs a called model), with its weights
    settled, and its outputs on ``inputs``."""
    model = _load(source)
    _run(model, inputs, what)
    _weights(model, source)
    return model, _run(model, inputs, what)


# ============================================================================================ handlers
def describe(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source`` -> ``{"input_names": [...] | null, "input_specs": [...] | null}``."""
    model = _load(request["source"])
    names = _input_names(model)
    specs = None
    if names is not None:
        specs = []
        for name, tensor in zip(names, model.inputs, strict=True):
            dims = [None if d is None else int(d) for d in tensor.shape]
            specs.append({"name": name, "dims": dims, "dtype": str(tensor.dtype)})
    return {"input_names": names, "input_specs": specs}


def run(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source``, ``inputs`` (.npz) -> ``outputs`` (.npz, ``output_0`` ...): the model in inference mode."""
    _, outputs = _prepared(request["source"], load_arrays(request["inputs"]), "in the data")
    save_outputs(request["outputs"], outputs)
    return {"outputs": len(outputs)}


def export(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """Export ``source`` with ``model.export(format="onnx")``.

    Request: ``source``, ``specs`` (``[{"name", "dims", "dtype"}]``, string dims symbolic), ``opset`` (or
    null: the backend's default), ``onnx`` (where to write), ``example`` (.npz), ``reference`` (.npz: the
    model's outputs on the example, written here).

    Result: ``input_names`` (in order), ``outputs`` (how many), ``exporter``, ``exporter_version``.
    """
    keras = _keras()
    backend = keras.config.backend()
    example = load_arrays(request["example"])
    specs = {spec["name"]: spec for spec in request["specs"]}
    model, outputs = _prepared(request["source"], {n: example[n] for n in specs}, "in --input")
    order = _ordered(model, list(specs), "in --input")
    signature = [
        keras.InputSpec(
            shape=tuple(None if isinstance(d, str) else int(d) for d in specs[name]["dims"]),
            dtype=specs[name]["dtype"],
            name=name,
        )
        for name in order
    ]
    try:
        model.export(
            request["onnx"],
            format="onnx",
            verbose=False,
            input_signature=signature if len(signature) == 1 else [signature],
            opset_version=request.get("opset"),
        )
    except Exception as exc:
        raise WorkerFailure(
            f"Keras could not export the model to ONNX on its {backend} backend: {protocol.first_line(exc)}",
            "--verbose shows the exporter's output",
            "export",
        ) from exc
    save_outputs(request["reference"], outputs)
    if backend == "jax":
        import jax2onnx

        version = getattr(jax2onnx, "__version__", "")
    else:
        import torch

        version = torch.__version__
    return {
        "input_names": order,
        "outputs": len(outputs),
        "exporter": EXPORTERS.get(backend, backend),
        "exporter_version": str(version),
    }


HANDLERS = {"describe": describe, "run": run, "export": export}
