"""The Chainer worker: runs one request in the Chainer environment (``convkit env create chainer``).

Run as ``<env>/bin/python protocol.py worker.py REQUEST.json`` by ``convkit.frontends.chainer``
(``protocol.py`` starts the process and serves ``HANDLERS``); it imports chainer, onnx_chainer, numpy and
onnx, never convkit (the environment does not have it), and loads ``reference.py`` from its own
folder by path.

A model source in a request is ``{"kind": "factory", "source": "/abs/file.py:factory" | "pkg.module:factory",
"weights": PATH | null, "unsafe_pickle": bool, "snapshot": PATH | null}``: the factory is imported and called
here (a class is instantiated) and must give a ``chainer.Link`` (a ``Chain`` is one); ``weights`` is an
``.npz`` as ``chainer.serializers.save_npz`` writes it (keys ``conv1/W``); ``snapshot`` pins the weights of
the handle's first request. Chainer has no saved-model format of its own beyond such weights, so factories
are the only source; the reference CNN is one too (``reference.py:ReferenceCNN`` with its weights).

Requests: ``describe``, ``run``, ``export``, ``reference_cnn``, ``train_reference_cnn`` (see each handler;
the formats are ``paddle/env/worker.py``'s).
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# NOTE: why this name: protocol.py starts every worker process and registers itself under it (see its main)
import convkit_worker_protocol as protocol

WorkerFailure = protocol.WorkerFailure
load_arrays = protocol.load_arrays
save_arrays = protocol.save_arrays
save_outputs = protocol.save_outputs

# NOTE: why 7..11: the opsets onnx-chainer 1.6.0 has converters for; asked for a later one, it would write
# opset-11 nodes under a later opset number (Squeeze, ReduceSum ... changed their signatures at 13).
MIN_OPSET = 7
MAX_OPSET = 11
_UNSUPPORTED = re.compile(r"^(\w+) is not supported$")


# ============================================================================================== models
def _state_of(link: Any) -> dict[str, Any]:
    """``save_npz``'s view of ``link``: key (``conv1/W``, ``bn/avg_mean``) -> array, ``None`` where a
    parameter is not initialized yet (a lazy ``L.Linear(None, n)`` before its first call)."""
    from chainer.serializers import DictionarySerializer

    serializer = DictionarySerializer()
    serializer.save(link)
    # NOTE: why: the serializer stands numpy.asarray(None) in for an uninitialized parameter
    return {
        key: None if value.dtype == object and value.shape == () and value[()] is None else value
        for key, value in serializer.target.items()
    }


def _read_npz(file: Path, unsafe_pickle: bool) -> dict[str, Any]:
    import numpy as np

    try:
        with np.load(str(file), allow_pickle=unsafe_pickle) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise WorkerFailure(f"cannot read {file}: {protocol.first_line(exc)}", kind="load") from exc
        raise WorkerFailure(
            f"{file} holds Python objects (save_npz writes None for a parameter not yet initialized), "
            "which numpy reads only by unpickling (it can run code)",
            "run the model once before chainer.serializers.save_npz, or pass --unsafe-allow-pickle if you "
            "trust the file",
            "unsafe",
        ) from exc
    except Exception as exc:
        raise WorkerFailure(
            f"cannot read {file}: {protocol.first_line(exc)}",
            "give the weights as chainer.serializers.save_npz writes them",
            "load",
        ) from exc


def _load_weights(link: Any, path: str, unsafe_pickle: bool) -> None:
    """Give ``link`` the weights of a ``save_npz`` file, after checking every key and shape.

    NOTE: why not ``chainer.serializers.load_npz``: it opens the file with ``allow_pickle=True``, and it
    reports only the first missing key; this reads it without unpickling and names every misfit.
    """
    from chainer.serializers import NpzDeserializer

    file = Path(path)
    if not file.is_file():
        raise WorkerFailure(f"weights file {file} does not exist", "check --weights", "input")
    if file.suffix != ".npz":
        raise WorkerFailure(
            f"{file} is not an .npz file: Chainer weights load from chainer.serializers.save_npz's format",
            "save them with chainer.serializers.save_npz('weights.npz', model)",
            "input",
        )
    state = _read_npz(file, unsafe_pickle)
    own = _state_of(link)
    protocol.check_weights_fit(
        file,
        {key: None if value is None else tuple(value.shape) for key, value in own.items()},
        {key: tuple(value.shape) for key, value in state.items()},
        "save them from this model with chainer.serializers.save_npz (keys like conv1/W)",
    )
    try:
        NpzDeserializer(state, strict=True).load(link)
    except Exception as exc:
        raise WorkerFailure(
            f"cannot load the weights in {file}: {protocol.first_line(exc)}", kind="load"
        ) from exc


def _call_target(link: Any) -> Any:
    """The method ``link(...)`` runs: an overridden ``__call__`` (Chainer's older idiom), else ``forward``."""
    import chainer

    if type(link).__call__ is not chainer.Link.__call__:
        return link.__call__
    return getattr(link, "forward", None)


def _forward_names(link: Any) -> list[str] | None:
    """The call's required positional parameters, or ``None`` when it takes ``*args`` (``Sequential``)."""
    target = _call_target(link)
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in parameters if p.kind in positional and p.default is p.empty]


class Loaded:
    """A model ready to call: the link, its input names in call order, and its snapshot file (if any)."""

    def __init__(self, link: Any, names: list[str] | None, snapshot: str | None) -> None:
        self.link = link
        self.names = names
        self.snapshot = snapshot

    def pin(self) -> None:
        """Save the weights to the handle's snapshot, once (after a forward: lazy parameters exist then).

        NOTE: why: each request calls the factory anew, in a new process; a factory that does not seed its
        initialisation would otherwise make other weights for the export than for the reference run.
        """
        if not self.snapshot or os.path.isfile(self.snapshot):
            return
        state = _state_of(self.link)
        if any(value is None for value in state.values()):
            return
        partial = f"{self.snapshot}.{os.getpid()}.npz"
        save_arrays(partial, state)
        os.replace(partial, self.snapshot)


def _load(source: Mapping[str, Any]) -> Loaded:
    import chainer
    from chainer.serializers import NpzDeserializer

    link = protocol.call_factory(source["source"])
    if not isinstance(link, chainer.Link):
        raise WorkerFailure(
            f"{source['source']} made a {type(link).__name__}, not a chainer.Link",
            "point at a function or class that returns a chainer.Chain (or another chainer.Link)",
            "load",
        )
    if source.get("weights"):
        _load_weights(link, source["weights"], bool(source.get("unsafe_pickle")))
    snapshot = source.get("snapshot")
    if snapshot and os.path.isfile(snapshot):
        # NOTE: why the deserializer: it also initializes lazy parameters to the snapshot's shapes
        NpzDeserializer(load_arrays(snapshot), strict=True).load(link)
    return Loaded(link, _forward_names(link), snapshot)


def _flatten(value: Any) -> list[Any]:
    import chainer
    import numpy as np

    if isinstance(value, chainer.Variable):
        return [np.asarray(value.array)]
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, list | tuple):
        return [array for item in value for array in _flatten(item)]
    if isinstance(value, Mapping):
        return [array for item in value.values() for array in _flatten(item)]
    if value is None:
        return []
    raise WorkerFailure(f"the model returned a {type(value).__name__}, not arrays", kind="data")


def _failure_text(exc: BaseException) -> str:
    """One line for an exception raised by the model: Chainer's type checks say what they expected.

    NOTE: why: an ``InvalidType``'s first line names only the function ("Invalid operation is performed in:
    Convolution2DFunction (Forward)"); its expectation and the actual values are what the user can act on.
    """
    from chainer.utils.type_check import InvalidType

    if isinstance(exc, InvalidType):
        where = str(exc).strip().splitlines()[0].rpartition(": ")[2]
        return f"{where} expects {exc.expect}, got {exc.actual}"
    return protocol.first_line(exc)


def _run(loaded: Loaded, inputs: Mapping[str, Any], what: str) -> list[Any]:
    """The model's outputs on ``inputs`` in inference mode (dropout off, batch norm on its statistics)."""
    import chainer

    order = protocol.ordered_names(loaded.names, list(inputs), what)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        try:
            outputs = _flatten(loaded.link(*[inputs[name] for name in order]))
        except WorkerFailure:
            raise
        except Exception as exc:
            raise WorkerFailure(
                f"the model failed on the inputs {what}: {_failure_text(exc)}",
                "check the shapes and dtypes in --input (Chainer's links want float32)",
                "data",
            ) from exc
    loaded.pin()
    return outputs


# ============================================================================================ handlers
def describe(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source`` -> ``{"input_names": [...] | null, "input_specs": null}`` (factories declare no shapes)."""
    loaded = _load(request["source"])
    return {"input_names": loaded.names, "input_specs": None}


def run(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source``, ``inputs`` (.npz) -> ``outputs`` (.npz, ``output_0`` ...): the model run in Chainer."""
    loaded = _load(request["source"])
    outputs = _run(loaded, load_arrays(request["inputs"]), "in the data")
    save_outputs(request["outputs"], outputs)
    return {"outputs": len(outputs)}


def _exporter_version() -> str:
    """onnx-chainer's version (the package has no ``__version__``)."""
    from importlib.metadata import version

    return version("onnx-chainer")


def _reshape_keeping_batch(params: Any) -> Any:
    """onnx-chainer's ``Reshape`` converter, but a target whose first size is the input's first size copies
    it at run time (ONNX ``Reshape``'s 0) instead of writing the traced number.

    NOTE: why: ``L.Linear`` (and ``F.reshape(x, (len(x), -1))``) flatten with the traced batch size, so
    onnx-chainer writes ``[2, -1]`` and the model works at batch 2 only; ``[0, -1]`` is the same at the
    traced size and follows the batch elsewhere (``convkit verify`` checks batch 1 and 3).
    """
    import numpy as np
    from onnx_chainer import mapping, onnx_helper

    func = params.func
    if not hasattr(func, "shape"):
        return mapping.converters["Reshape"](params)
    shape = list(func.shape)
    first = func.inputs[0].shape
    if shape and first and shape[0] == first[0] != 0:
        shape[0] = 0
    name = params.context.add_const(np.asarray(shape, dtype=np.int64), "shape")
    return (onnx_helper.make_node("Reshape", [*params.input_names, name], params.output_names),)


def param_names(link: Any) -> dict[str, str]:
    """onnx-chainer's names for ``link``'s parameters and persistent arrays (``param_conv1_W``,
    ``param_bn_avg_mean``) -> their ``save_npz`` keys (``conv1/W``, ``bn/avg_mean``)."""
    from onnx_chainer.onnx_helper import cleanse_param_name

    names = {}
    for path, sub in link.namedlinks():
        for attr in [*sub._params, *sub._persistent]:
            full = f"{path.rstrip('/')}/{attr}"
            names[cleanse_param_name(full)] = full.lstrip("/")
    return names


def _onnx_chainer_export(
    link: Any, names: list[str], args: list[Any], shapes: list[tuple[Any, ...]], opset: int
) -> Any:
    """onnx-chainer's ``ModelProto`` of ``link`` traced on ``args``, checked in full."""
    import chainer
    import onnx
    import onnx_chainer

    try:
        with warnings.catch_warnings():
            # NOTE: why: external_converters is "experimental" and makes onnx-chainer downgrade the model
            # check to a warning; the check runs below, in full, as an error.
            warnings.simplefilter("ignore")
            with chainer.using_config("train", False):
                model = onnx_chainer.export(
                    link,
                    tuple(args),
                    filename=None,
                    opset_version=opset,
                    input_names=names,
                    input_shapes=shapes,
                    external_converters={"Reshape": _reshape_keeping_batch},
                )
    except ValueError as exc:
        found = _UNSUPPORTED.match(str(exc).strip())
        if found is None:
            raise WorkerFailure(
                f"onnx-chainer could not export the model: {protocol.first_line(exc)}", kind="export"
            ) from exc
        raise WorkerFailure(
            f"onnx-chainer {_exporter_version()} cannot export the Chainer function {found.group(1)} "
            "that the model calls",
            f"write that part with functions onnx-chainer converts, or pass a converter for "
            f"{found.group(1)} (onnx_chainer.export's external_converters) in your own export",
            "export",
        ) from exc
    except Exception as exc:
        raise WorkerFailure(
            f"onnx-chainer could not export the model: {_failure_text(exc)}",
            "the model must run on the example inputs in Chainer; --verbose shows the traceback",
            "export",
        ) from exc
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise WorkerFailure(
            f"onnx-chainer wrote an invalid model: {protocol.first_line(exc)}", kind="export"
        ) from exc
    return model


def _drop_initializer_inputs(model: Any) -> None:
    """Remove the weights from the graph's inputs (onnx-chainer lists them there, as IR 3 needed).

    NOTE: why: as inputs they could be overridden at run time, so onnxruntime neither folds nor trusts them,
    and the model would show nine inputs where the user gave one.
    """
    weights = {tensor.name for tensor in model.graph.initializer}
    kept = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)


def export(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """Export ``source`` to ONNX with onnx-chainer.

    Request: ``source``, ``specs`` (``[{"name", "dims", "dtype"}]``, string dims symbolic), ``opset`` (or
    null: 11, onnx-chainer's latest), ``onnx`` (where to write; the core renames and moves it), ``example``
    (.npz: the inputs onnx-chainer traces), ``reference`` (.npz: the model's outputs on the example).

    Result: ``input_names`` (the ONNX inputs, in order), ``param_names`` (onnx-chainer's parameter names ->
    ``save_npz`` keys), ``outputs`` (how many), ``exporter_version``.
    """
    opset = int(request.get("opset") or MAX_OPSET)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise WorkerFailure(
            f"onnx-chainer {_exporter_version()} writes opsets {MIN_OPSET} to {MAX_OPSET}, not {opset}",
            f"use --opset {MAX_OPSET} or omit it",
            "export",
        )
    loaded = _load(request["source"])
    specs = {spec["name"]: spec for spec in request["specs"]}
    order = protocol.ordered_names(loaded.names, list(specs), "in --input")
    example = load_arrays(request["example"])
    missing = [name for name in order if name not in example]
    if missing:
        raise WorkerFailure(f"the example has no input {', '.join(missing)}", kind="data")
    shapes = [tuple(specs[name]["dims"]) for name in order]
    model = _onnx_chainer_export(loaded.link, order, [example[name] for name in order], shapes, opset)
    _drop_initializer_inputs(model)
    outputs = _run(loaded, {name: example[name] for name in order}, "in the example")
    partial = f"{request['onnx']}.{os.getpid()}.partial"
    Path(partial).write_bytes(model.SerializeToString())
    os.replace(partial, request["onnx"])
    save_outputs(request["reference"], outputs)
    return {
        "input_names": order,
        "param_names": param_names(loaded.link),
        "outputs": len(outputs),
        "exporter_version": _exporter_version(),
    }


def _reference_module() -> Any:
    return protocol.load_sibling("reference")


def reference_cnn(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``weights`` (canonical .npz), ``folder`` -> the reference CNN's weights saved there by
    ``chainer.serializers.save_npz`` (``model.npz``).

    Result: ``source``, a ``factory`` source spec (``reference.py:ReferenceCNN`` with those weights)
    that later requests load as they load a user's factory with ``--weights``.
    """
    import chainer

    reference = _reference_module()
    try:
        model = reference.build_reference_cnn(load_arrays(request["weights"]))
    except ValueError as exc:
        raise WorkerFailure(str(exc), kind="data") from exc
    target = os.path.join(request["folder"], "model.npz")
    chainer.serializers.save_npz(target, model, compression=False)
    return {
        "source": {
            "kind": "factory",
            "source": f"{protocol.WORKER_DIR / 'reference.py'}:ReferenceCNN",
            "weights": target,
            "unsafe_pickle": False,
            "snapshot": None,
        }
    }


def train_reference_cnn(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """Train the reference CNN the Chainer way (``reference.py``); the request is
    ``protocol.train_reference_cnn``'s."""
    return protocol.train_reference_cnn(request, channel, _reference_module().train_reference_cnn)


HANDLERS = {
    "describe": describe,
    "run": run,
    "export": export,
    "reference_cnn": reference_cnn,
    "train_reference_cnn": train_reference_cnn,
}
