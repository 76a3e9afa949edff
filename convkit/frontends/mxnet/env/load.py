"""The MXNet worker's models: a request's model source loaded (a factory's ``gluon.HybridBlock`` given its
weights, or a saved symbol read with its parameters) and run by MXNet for the reference outputs.

Runs in the MXNet environment only: it imports mxnet and numpy (inside functions), never convkit; the worker
and ``export.py`` load it by path. Failures are ``WorkerFailure`` errors with MXNet's message made readable
(``mx_failure``). The source formats are described in ``worker.py``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# NOTE: why this name: protocol.py starts every worker process and registers itself under it (see its main)
import convkit_worker_protocol as protocol

WorkerFailure = protocol.WorkerFailure
load_arrays = protocol.load_arrays

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


def mxnet() -> Any:
    import mxnet

    return mxnet


def mx_failure(exc: BaseException) -> str:
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


def load(source: Mapping[str, Any]) -> Loaded:
    if source["kind"] == "symbol":
        return _load_symbol(source["symbol_file"], source["params_file"])
    mx = mxnet()
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


def structured(block: Any) -> dict[str, Any]:
    """The block's parameters by attribute path (``fc1.weight``), the names ``save_parameters`` writes."""
    return dict(block._collect_params_with_prefix())


def _set_parameters(block: Any, arrays: Mapping[str, Any]) -> None:
    mx = mxnet()
    for name, param in structured(block).items():
        if name in arrays:
            param.set_data(mx.nd.array(arrays[name], dtype=param.dtype))


def _load_weights(block: Any, path: str) -> None:
    """``--weights``: an ``.npz`` keyed by the block's parameter paths (``fc1.weight``), or a ``.params`` file
    of ``save_parameters`` (MXNet's own array format, which runs no code when read)."""
    mx = mxnet()
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
        raise WorkerFailure(f"cannot read {file}: {mx_failure(exc)}", kind="load") from exc
    own = structured(block)
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

    state = {name: param.data().asnumpy() for name, param in structured(loaded.block).items()}
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
    mx = mxnet()
    try:
        symbol = mx.sym.load(symbol_file)
    except Exception as exc:
        raise WorkerFailure(
            f"cannot read the MXNet symbol file {symbol_file}: {mx_failure(exc)}",
            "give the -symbol.json that HybridBlock.export or mx.model.save_checkpoint wrote",
            "load",
        ) from exc
    try:
        saved = mx.nd.load(params_file)
    except Exception as exc:
        raise WorkerFailure(
            f"cannot read the MXNet parameters {params_file}: {mx_failure(exc)}",
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


def ordered(loaded: Loaded, names: list[str], what: str) -> list[str]:
    """``names`` in the model's call order, checked against the names it takes."""
    return list(protocol.ordered_names(loaded.names, names, what))


def _flatten(value: Any) -> list[Any]:
    mx = mxnet()
    if isinstance(value, mx.nd.NDArray):
        return [value.asnumpy()]
    if isinstance(value, list | tuple):
        return [array for item in value for array in _flatten(item)]
    if value is None:
        return []
    raise WorkerFailure(f"the model returned a {type(value).__name__}, not NDArrays", kind="data")


def run(loaded: Loaded, inputs: Mapping[str, Any], what: str) -> list[Any]:
    """The model's outputs on ``inputs``, computed by MXNet (imperatively for blocks, by binding the saved
    symbol otherwise), in inference mode (no dropout)."""
    mx = mxnet()
    order = ordered(loaded, list(inputs), what)
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
            f"MXNet could not run the model: {mx_failure(exc)}",
            "check the input shapes and dtypes (--input NAME:DIMS[:DTYPE]) and that the parameters fit",
            "data",
        ) from exc
