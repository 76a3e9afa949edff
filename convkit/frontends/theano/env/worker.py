"""The Theano worker: runs one request in the Theano environment (``convkit env create theano``), where
PyTensor, Theano's maintained successor, stands in for Theano itself.

Run as ``<env>/bin/python protocol.py worker.py REQUEST.json`` by ``convkit.frontends.theano``
(``protocol.py`` starts the process and serves ``HANDLERS``); it imports pytensor, numpy and onnx, never
convkit (the environment does not have it), and loads ``converter.py`` (the converter) and
``reference.py`` from its own folder by path.

A PyTensor model is a symbolic graph. A factory returns it as ``{"inputs": [x, ...], "outputs": [y, ...]}``
or as the tuple ``(inputs, outputs)`` (a single variable may stand for a list of one): the inputs are
named symbolic variables (``pt.tensor("x", dtype="float32", shape=(None, 16))``), their names the model's
input names; the outputs are variables computed from them and from shared variables (the weights, named:
``pytensor.shared(W, name="fc1.weight")``).

A model source in a request is one of:

- ``{"kind": "factory", "source": "/abs/file.py:factory" | "pkg.module:factory", "weights": PATH | null,
  "unsafe_pickle": bool, "snapshot": PATH | null}``: the factory is imported and called here, its shared
  variables given ``weights`` (``.npz`` keyed by shared variable name), then the values of the handle's
  first request (``snapshot``);
- ``{"kind": "reference_cnn", "weights": PATH}``: the reference CNN built from canonical weights.

Requests: ``describe``, ``run``, ``export``, ``reference_cnn``, ``train_reference_cnn`` (see each handler).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# NOTE: why this name: protocol.py starts every worker process and registers itself under it (see its main)
import convkit_worker_protocol as protocol

WorkerFailure = protocol.WorkerFailure
load_arrays = protocol.load_arrays
save_arrays = protocol.save_arrays
save_outputs = protocol.save_outputs

CONVENTION = (
    'return {"inputs": [x, ...], "outputs": [y, ...]} or the tuple (inputs, outputs): named symbolic '
    'PyTensor variables in (pt.tensor("x", dtype="float32", shape=(None, 16))), variables computed from them '
    "and from shared weights out"
)


# ============================================================================================== models
class Loaded:
    """A PyTensor model: its input and output variables, the shared variables (weights) its outputs read,
    and the native function, compiled on first use."""

    def __init__(self, inputs: list[Any], outputs: list[Any]) -> None:
        converter = protocol.load_sibling("converter")
        self.inputs = inputs
        self.outputs = outputs
        self.names = [str(var.name) for var in inputs]
        self.shared = [v for v in converter.shared_inputs(outputs) if _is_tensor_shared(v)]
        self._function: Any = None

    def function(self) -> Any:
        import pytensor

        if self._function is None:
            try:
                self._function = pytensor.function(self.inputs, self.outputs, mode=native_mode())
            except Exception as exc:
                raise WorkerFailure(
                    f"pytensor.function could not compile the model: {protocol.first_line(exc)}",
                    "every variable the outputs use must be an input or a shared variable",
                    "load",
                ) from exc
        return self._function


def native_mode() -> Any:
    """Theano's FAST_RUN: the ``fast_run`` rewrites run by PyTensor's C virtual machine (``cvm``), or by
    its Python one when no C++ compiler is found (``pytensor.config.cxx`` empty; much slower).

    NOTE: why not PyTensor 3's default (Numba): every request is a new process, and Numba compiles the
    reference CNN's loops for about 30 s in each; the C backend caches its compiled modules on disk
    (``~/.pytensor``), so only the first process pays for compiling them.
    """
    import pytensor
    from pytensor.compile.mode import Mode

    return Mode(linker="cvm" if pytensor.config.cxx else "vm", optimizer="fast_run")


def _is_tensor_shared(var: Any) -> bool:
    from pytensor.tensor.sharedvar import TensorSharedVariable

    return isinstance(var, TensorSharedVariable)


def _as_variables(value: Any, what: str, source: str) -> list[Any]:
    from pytensor.tensor.variable import TensorVariable

    items = list(value) if isinstance(value, list | tuple) else [value]
    wrong = [type(item).__name__ for item in items if not isinstance(item, TensorVariable)]
    if wrong or not items:
        found = f"a {wrong[0]}" if wrong else "no variables"
        raise WorkerFailure(
            f"{source} gave {found} among its {what}, not PyTensor variables", CONVENTION, "load"
        )
    return items


def model_of(value: Any, source: str) -> Loaded:
    """A factory's result as a model, checked against the convention (``CONVENTION``).

    Raises:
        WorkerFailure: the result breaks the convention (kind ``load``).
    """
    from pytensor.compile import Function
    from pytensor.graph.basic import Constant

    if isinstance(value, Function):
        # NOTE: why not take it: a compiled function holds FAST_RUN's rewritten graph (BLAS calls, fused
        # loops), not the graph the user wrote; the variables it was compiled from are what converts cleanly
        raise WorkerFailure(
            f"{source} returned a compiled pytensor.function, not its graph",
            'return the variables you compiled it from: {"inputs": [x, ...], "outputs": [y, ...]}',
            "load",
        )
    if isinstance(value, Mapping) and set(value) == {"inputs", "outputs"}:
        inputs, outputs = value["inputs"], value["outputs"]
    elif isinstance(value, tuple | list) and len(value) == 2:
        inputs, outputs = value
    else:
        shown = f"a dict with keys {', '.join(map(str, value))}" if isinstance(value, Mapping) else None
        raise WorkerFailure(
            f"{source} returned {shown or 'a ' + type(value).__name__}, not a PyTensor model",
            CONVENTION,
            "load",
        )
    inputs = _as_variables(inputs, "inputs", source)
    outputs = _as_variables(outputs, "outputs", source)
    for var in inputs:
        if var.owner is not None or isinstance(var, Constant) or _is_tensor_shared(var):
            raise WorkerFailure(
                f"input {var} of {source} is computed, a constant or a shared variable, not a symbolic input",
                CONVENTION,
                "load",
            )
    names = [var.name for var in inputs]
    if any(not name for name in names) or len(set(names)) != len(names):
        raise WorkerFailure(
            f"the inputs of {source} need distinct names (they are {', '.join(map(repr, names))})",
            'name each one: pt.tensor("x", dtype=..., shape=...)',
            "load",
        )
    return Loaded(inputs, outputs)


def _load(source: Mapping[str, Any]) -> Loaded:
    if source["kind"] == "reference_cnn":
        weights = load_arrays(source["weights"])
        try:
            built = _reference_module().build_reference_cnn(weights)
        except ValueError as exc:
            raise WorkerFailure(str(exc), kind="data") from exc
        return model_of(built, "the reference CNN")
    loaded = model_of(protocol.call_factory(source["source"]), source["source"])
    if source.get("weights"):
        _load_weights(loaded, source["weights"], bool(source.get("unsafe_pickle")))
    if source.get("snapshot"):
        _pin_weights(loaded, source["snapshot"])
    return loaded


def _read_weights(file: Path, unsafe_pickle: bool) -> dict[str, Any]:
    """``.npz`` safely; a pickled ``{name: array}`` (``.pkl``, Theano's habit) only with ``unsafe_pickle``."""
    if file.suffix == ".npz":
        try:
            return load_arrays(str(file))
        except Exception as exc:
            raise WorkerFailure(f"cannot read {file}: {protocol.first_line(exc)}", kind="load") from exc
    if not unsafe_pickle:
        raise WorkerFailure(
            f"{file} is not an .npz; other weight files are pickles here, and unpickling can run code",
            "save the shared variables as .npz (np.savez(path, **{v.name: v.get_value() for v in params})), "
            "or pass --unsafe-allow-pickle if you trust the file",
            "unsafe",
        )
    import pickle

    try:
        with file.open("rb") as handle:
            # NOTE: why allowed: the user passed --unsafe-allow-pickle; Theano-era code pickled its params
            found = pickle.load(handle)
    except Exception as exc:
        raise WorkerFailure(f"cannot unpickle {file}: {protocol.first_line(exc)}", kind="load") from exc
    if not isinstance(found, Mapping):
        raise WorkerFailure(f"{file} holds a {type(found).__name__}, not {{name: array}}", kind="load")
    return dict(found)


def _load_weights(loaded: Loaded, path: str, unsafe_pickle: bool) -> None:
    """Give the model's shared variables the arrays of ``path``, keyed by the shared variables' names.

    Raises:
        WorkerFailure: the file is missing or unreadable, or its arrays do not fit (named, with shapes).
    """
    import numpy as np

    file = Path(path)
    if not file.is_file():
        raise WorkerFailure(f"weights file {file} does not exist", "check --weights", "input")
    state = _read_weights(file, unsafe_pickle)
    own: dict[str, Any] = {}
    for var in loaded.shared:
        if not var.name or var.name in own:
            raise WorkerFailure(
                f"--weights needs every shared variable named once, but {var.name or 'one'} is "
                f"{'unnamed' if not var.name else 'named twice'}",
                'name them in the factory: pytensor.shared(value, name="fc1.weight")',
                "load",
            )
        own[var.name] = var
    wanted = {name: var.get_value(borrow=True) for name, var in own.items()}
    wrong_dtypes = [
        f"{name} {np.asarray(value).dtype} (want {wanted[name].dtype})"
        for name, value in state.items()
        if name in wanted and not np.can_cast(np.asarray(value).dtype, wanted[name].dtype, "same_kind")
    ]
    protocol.check_weights_fit(
        file,
        {name: tuple(value.shape) for name, value in wanted.items()},
        {name: tuple(np.shape(value)) for name, value in state.items()},
        "the .npz keys must be the model's shared variable names, each with its shape",
        wrong_dtypes=wrong_dtypes,
    )
    for name, var in own.items():
        var.set_value(np.asarray(state[name], var.get_value(borrow=True).dtype))


def _pin_weights(loaded: Loaded, snapshot: str) -> None:
    """Give every request on one handle the same weights: the first saves the shared variables' values
    to ``snapshot`` (by position), later ones load them.

    NOTE: why: each request calls the factory anew, in a new process; a factory that draws its initial
    weights unseeded would otherwise make other weights for the export than for the reference run.
    """
    if os.path.isfile(snapshot):
        values = load_arrays(snapshot)
        for k, var in enumerate(loaded.shared):
            if f"shared_{k}" in values:
                var.set_value(values[f"shared_{k}"])
        return
    partial = f"{snapshot}.{os.getpid()}.npz"
    save_arrays(partial, {f"shared_{k}": var.get_value() for k, var in enumerate(loaded.shared)})
    os.replace(partial, snapshot)


def _run(loaded: Loaded, inputs: Mapping[str, Any], what: str) -> list[Any]:
    import numpy as np

    order = protocol.ordered_names(loaded.names, list(inputs), what)
    function = loaded.function()
    for name, var in zip(order, loaded.inputs, strict=True):
        value = inputs[name]
        if np.ndim(value) != var.type.ndim or str(np.asarray(value).dtype) != var.type.dtype:
            raise WorkerFailure(
                f"input {name} is {var.type.dtype} with {var.type.ndim} dims in the model, "
                f"{np.asarray(value).dtype} with {np.ndim(value)} dims {what}",
                f"give {name} as {var.type.dtype} with {var.type.ndim} dims",
                "data",
            )
    try:
        results = function(*[inputs[name] for name in order])
    except Exception as exc:
        raise WorkerFailure(f"the model failed on the data: {protocol.first_line(exc)}", kind="data") from exc
    return [np.asarray(value) for value in results]


def _input_specs(loaded: Loaded) -> list[dict[str, Any]]:
    return [
        {
            "name": var.name,
            "dims": [None if d is None else int(d) for d in var.type.shape],
            "dtype": var.type.dtype,
        }
        for var in loaded.inputs
    ]


def _dims_text(shape: tuple[int | None, ...]) -> str:
    return ",".join(
        "batch" if d is None and axis == 0 else f"d{axis}" if d is None else str(d)
        for axis, d in enumerate(shape)
    )


def _input_dims(loaded: Loaded, order: list[str], specs: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    """The ONNX inputs' dims from ``--input``, checked against the graph's dtypes and static shapes."""
    dims = []
    for name, var in zip(order, loaded.inputs, strict=True):
        spec = specs[name]
        wanted = list(spec["dims"])
        if len(wanted) != var.type.ndim or spec["dtype"] != var.type.dtype:
            raise WorkerFailure(
                f"input {name} is {var.type.dtype} with {var.type.ndim} dims in the model, --input gives "
                f"{spec['dtype']} with {len(wanted)} dims",
                f"match the model: --input {name}:{_dims_text(var.type.shape)}:{var.type.dtype}",
                "data",
            )
        for axis, (want, static) in enumerate(zip(wanted, var.type.shape, strict=True)):
            if static is not None and want != static:
                raise WorkerFailure(
                    f"input {name} has the fixed size {static} on axis {axis} in the model (its static "
                    f"shape), --input asks for {want}",
                    "give that size in --input, or declare the axis None in pt.tensor(shape=...)",
                    "export",
                )
        dims.append(wanted)
    return dims


# ============================================================================================ handlers
def describe(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source`` -> ``{"input_names": [...], "input_specs": [...]}`` (unknown static dims ``null``)."""
    loaded = _load(request["source"])
    return {"input_names": loaded.names, "input_specs": _input_specs(loaded)}


def run(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source``, ``inputs`` (.npz) -> ``outputs`` (.npz, ``output_0`` ...): ``pytensor.function`` run."""
    loaded = _load(request["source"])
    outputs = _run(loaded, load_arrays(request["inputs"]), "in the data")
    save_outputs(request["outputs"], outputs)
    return {"outputs": len(outputs)}


def export(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """Convert ``source``'s graph to ONNX (``converter.convert``).

    Request: ``source``, ``specs`` (``[{"name", "dims", "dtype"}]``, string dims symbolic), ``opset`` (or
    null: 17), ``onnx`` (where to write), ``example`` (.npz), ``reference`` (.npz: the model's outputs on
    the example, written here).

    Result: ``input_names`` (in the graph's order), ``param_names`` (none: the initializers already carry the
    shared variables' names), ``outputs`` (how many), ``exporter_version``.
    """
    converter = protocol.load_sibling("converter")
    loaded = _load(request["source"])
    specs = {spec["name"]: spec for spec in request["specs"]}
    order = protocol.ordered_names(loaded.names, list(specs), "in --input")
    opset = int(request.get("opset") or converter.DEFAULT_OPSET)
    try:
        model = converter.convert(loaded.inputs, loaded.outputs, _input_dims(loaded, order, specs), opset)
    except converter.ConversionError as exc:
        raise WorkerFailure(exc.message, exc.hint, "export") from exc
    example = load_arrays(request["example"])
    outputs = _run(loaded, {name: example[name] for name in order}, "in the example")
    Path(request["onnx"]).write_bytes(model.SerializeToString())
    save_outputs(request["reference"], outputs)
    return {
        "input_names": order,
        "param_names": {},
        "outputs": len(outputs),
        "exporter_version": converter.CONVERTER_VERSION,
    }


def _reference_module() -> Any:
    return protocol.load_sibling("reference")


def reference_cnn(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``weights`` (canonical .npz), ``folder`` -> ``source``: the ``reference_cnn`` spec that later
    requests load (the graph is rebuilt from the weights each time; PyTensor saves graphs only by pickle).
    """
    source = {"kind": "reference_cnn", "weights": request["weights"]}
    _load(source)
    return {"source": source}


def train_reference_cnn(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """Train the reference CNN the PyTensor way, compiled in the native run's mode (see
    ``protocol.train_reference_cnn`` for the request)."""
    reference = _reference_module()

    def train(*arguments: Any) -> Any:
        return reference.train_reference_cnn(*arguments, native_mode())

    return protocol.train_reference_cnn(request, channel, train)


HANDLERS = {
    "describe": describe,
    "run": run,
    "export": export,
    "reference_cnn": reference_cnn,
    "train_reference_cnn": train_reference_cnn,
}
