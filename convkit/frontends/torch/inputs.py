"""A PyTorch model's inputs: the names ``forward`` (or a TorchScript schema, or an ExportedProgram) takes,
the shapes an ExportedProgram recorded, the check of the user's names against them, and which dims the model
lets be dynamic (``settle_dims``: torch.export asked with ``Dim.AUTO``) with the ``dynamic_shapes`` built
from the specs.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from convkit.core.inputs import InputSpec, kept_static_note, resolve_dynamic_dims
from convkit.errors import DataError
from convkit.frontends._quiet import Quiet
from convkit.frontends.torch._common import (
    call_arguments,
    parameter_order,
    placeholder_name,
    user_input_specs,
)

Bounds = dict[str, tuple[int | None, int | None]]
"""A dynamic dim's name -> the smallest and largest size the model allows (``None``: no bound known)."""

_INPUT_DTYPES = {"float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool"}


def input_names(model: Any) -> list[str] | None:
    """``forward``'s required parameters (or the ExportedProgram's / TorchScript schema's inputs)."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return [placeholder_name(spec) for spec in user_input_specs(model)]
    if isinstance(model, torch.jit.ScriptModule):
        return _script_input_names(model)
    return _forward_input_names(model)


def input_specs(model: Any) -> list[InputSpec] | None:
    """Shapes an ExportedProgram recorded (its symbolic dims stay symbolic); ``None`` for modules."""
    import torch

    if not isinstance(model, torch.export.ExportedProgram):
        return None
    symbols: dict[str, str] = {}
    specs = []
    for spec in user_input_specs(model):
        name = placeholder_name(spec)
        value = _placeholder_value(model, name)
        if value is None or not isinstance(value, torch.Tensor):
            return None
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype not in _INPUT_DTYPES:
            return None
        dims: list[int | str] = []
        for axis, size in enumerate(value.shape):
            if isinstance(size, int):
                dims.append(size)
                continue
            key = str(size)
            if key not in symbols:
                # NOTE: why rename: torch.export calls dims s0, s77 ...; the batch is the usual meaning of
                # a symbolic leading dim, and a stable name reads better in the ONNX file and reports.
                wanted = "batch" if axis == 0 and "batch" not in symbols.values() else f"{name}_dim{axis}"
                symbols[key] = re.sub(r"\W", "_", wanted)
            dims.append(symbols[key])
        specs.append(InputSpec(name, dims, dtype))
    return specs


def check_spec_names(model: Any, given: list[str]) -> None:
    """Check the names of the inputs given against the model's :func:`input_names`.

    Raises:
        DataError: the names do not match (given ones may add optional inputs to the required ones).
    """
    known = input_names(model)
    if known is not None and sorted(known) != sorted(given) and not set(known) <= set(given):
        raise DataError(
            f"input names {', '.join(given)} do not match the model's inputs",
            f"expected: {', '.join(known)}",
        )


def _forward_input_names(model: Any) -> list[str] | None:
    """Required parameters of ``forward``; ``None`` when it has none (all optional, or ``*args``).

    NOTE: why required ones only: the core checks given names against these exactly, and optional inputs
    (masks, flags) are usually left at their defaults. With ``None`` the core takes the user's names as
    they are, which lets a model whose inputs are all optional (``input_ids=None, ...``) be fed any subset;
    ``call_arguments`` still orders them and rejects names ``forward`` does not take.
    """
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError, AttributeError):
        return None
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    required = [
        p.name
        for p in params
        if p.kind is not inspect.Parameter.VAR_KEYWORD and p.default is inspect.Parameter.empty
    ]
    return required or None


def _script_input_names(model: Any) -> list[str] | None:
    try:
        arguments = model.forward.schema.arguments[1:]
    except Exception:
        return None
    return [a.name for a in arguments if not a.has_default_value()] or None


def _placeholder_value(program: Any, name: str) -> Any:
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == name:
            return node.meta.get("val")
    return None


# ================================================================================ dynamic dims of the inputs
def input_order(model: Any, names: Sequence[str]) -> list[str]:
    """``names`` in the order ``call_arguments`` passes them (the order of the exported graph's inputs)."""
    order = parameter_order(model)
    return list(names) if order is None else [name for name in order if name in names]


def dynamic_shapes(
    model: Any, specs: Sequence[InputSpec], auto: bool = False, bounds: Bounds | None = None
) -> dict[str, Any] | tuple[Any, ...] | None:
    """``{input: {axis: Dim(symbol)}}``; one ``Dim`` per symbol, so inputs that share one stay equal, bounded
    by ``bounds``. With ``auto``, each ``dynamic_if_allowed`` axis gets ``Dim.AUTO`` (torch decides).

    A ``forward(*args)`` gets a tuple in argument order instead: there are no parameter names to key by.
    """
    import torch

    dims: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    for spec in specs:
        axes = {}
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, str):
                low, high = (bounds or {}).get(dim, (None, None))
                axes[axis] = dims.setdefault(dim, torch.export.Dim(dim, min=low, max=high))
            elif auto and axis in spec.dynamic_if_allowed:
                axes[axis] = torch.export.Dim.AUTO
        shapes[spec.name] = axes or None
    if not any(shapes.values()):
        return None
    if parameter_order(model) is None:
        return _star_args_shapes(model, list(shapes.values()))
    return shapes


def _star_args_shapes(model: Any, shapes: list[Any]) -> dict[str, Any] | tuple[Any, ...]:
    """``forward(x, *rest)``: the leading parameters by name, the rest as one tuple under ``rest``."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return tuple(shapes)
    keyed: dict[str, Any] = {}
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            keyed[param.name] = tuple(shapes)
            return keyed
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            keyed[param.name] = shapes.pop(0) if shapes else None
    return tuple(shapes)


def traceable(specs: Sequence[InputSpec], tensors: Mapping[str, Any]) -> dict[str, Any]:
    """The tensors to capture with: a symbolic axis of size 1 repeated to size 2.

    NOTE: why: torch.export fixes a dim whose example size is 0 or 1 (pytorch#148886), so data with one
    sample would export with the batch fixed at 1; the sample twice follows the same code with size 2.
    Only symbolic axes (which must be dynamic) are repeated: a size-1 axis left to the model (a grey
    image's one channel) is most often one the model fixes.
    """
    import torch

    wide = dict(tensors)
    for spec in specs:
        for axis, dim in enumerate(spec.dims):
            value = wide[spec.name]
            if isinstance(dim, str) and axis < value.dim() and value.shape[axis] == 1:
                wide[spec.name] = torch.cat([value, value], dim=axis)
    return wide


def settle_dims(
    model: Any, specs: Sequence[InputSpec], tensors: Mapping[str, Any], verbose: bool
) -> tuple[list[InputSpec], Bounds, list[str]]:
    """Decide each ``dynamic_if_allowed`` axis (see ``InputSpec``): dynamic where the model allows it.

    torch.export captures the model once with ``Dim.AUTO`` on those axes: an axis it keeps symbolic is made
    dynamic (named by ``resolve_dynamic_dims``), one it fixes stays at the example's size with a note. An
    ExportedProgram answers from its recorded shapes; a TorchScript model cannot be asked.

    NOTE: why a capture of our own, not ``torch.onnx.export(dynamic_shapes=Dim.AUTO)``: torch.onnx captures
    with ``backed_size_oblivious``, under which a check such as ``channels == 3`` or ViT's image size leaves
    the dim symbolic (as a runtime assert the ONNX file drops), so its ONNX file claims sizes the model
    refuses. A plain torch.export fixes those; the RNN decompositions torch.onnx uses keep an LSTM's
    sequence dynamic here as there.

    Returns:
        The specs with every ``dynamic_if_allowed`` axis settled, the bounds torch found for the new dims
        (a ``Dim`` takes them in the ONNX capture), and notes naming the axes kept static and why.
    """
    import torch

    if not any(spec.dynamic_if_allowed for spec in specs):
        return list(specs), {}, []
    symbols: dict[tuple[str, int], str] = {}
    ranges: Bounds = {}
    why_fixed = "the model fixes {it}"
    if isinstance(model, torch.jit.ScriptModule):
        why_fixed = (
            "a TorchScript model cannot say which sizes it takes; --input NAME:DIMS makes {it} dynamic"
        )
    else:
        try:
            if isinstance(model, torch.export.ExportedProgram):
                why_fixed = "the .pt2 was exported with {it} fixed"
                symbols, ranges = _program_symbols(model, specs)
            else:
                traced = traceable(specs, tensors)
                program = _capture_with_auto_dims(model, specs, traced, verbose)
                symbols, ranges = _program_symbols(program, specs)
                symbols = _passing_guards(program, specs, traced, symbols, ranges)
        except Exception as exc:
            failed = type(exc).__name__
            why_fixed = f"torch.export could not capture the model to tell which sizes it takes ({failed})"
    kept: dict[str, list[tuple[str, int, int]]] = {}
    for spec in specs:
        for axis in spec.dynamic_if_allowed:
            if (spec.name, axis) not in symbols:
                size = int(spec.dims[axis])
                why = why_fixed if size > 1 else _SMALL
                kept.setdefault(why, []).append((spec.name, axis, size))
    resolved = resolve_dynamic_dims(specs, symbols)
    bounds: Bounds = {}
    for spec in resolved:
        for axis, dim in enumerate(spec.dims):
            symbol = symbols.get((spec.name, axis))
            if isinstance(dim, str) and symbol in ranges:
                bounds[dim] = ranges[symbol]
    notes = [note for why, axes in kept.items() if (note := kept_static_note(axes, why))]
    return resolved, bounds, notes


_SMALL = "torch.export fixes sizes 0 and 1 (data of another size lets {it} vary)"


def _capture_with_auto_dims(
    model: Any, specs: Sequence[InputSpec], tensors: Mapping[str, Any], verbose: bool
) -> Any:
    """``torch.export.export`` (non-strict, as torch.onnx tries first) with ``Dim.AUTO`` on the axes left to
    the model, under torch.onnx's RNN decompositions."""
    import torch

    args, kwargs = call_arguments(model, tensors)
    shapes = dynamic_shapes(model, specs, auto=True)
    with Quiet(verbose), _rnn_decompositions():
        return torch.export.export(model, args, kwargs=kwargs or None, dynamic_shapes=shapes, strict=False)


@contextlib.contextmanager
def _rnn_decompositions() -> Iterator[None]:
    """The LSTM and GRU decompositions (a while loop over the sequence) torch.onnx registers for a dynamic
    capture; without them torch.export fixes an LSTM's sequence length. Nothing where torch has none."""
    try:
        from torch.export._patches import (
            register_gru_while_loop_decomposition,
            register_lstm_while_loop_decomposition,
        )
    except ImportError:
        yield
        return
    with (
        fresh_rnn_dispatch(),
        register_lstm_while_loop_decomposition(),
        register_gru_while_loop_decomposition(),
    ):
        yield


@contextlib.contextmanager
def fresh_rnn_dispatch() -> Iterator[None]:
    """Clear the dispatch caches of ``aten.lstm`` and ``aten.gru`` before and after the block.

    NOTE: why: the while-loop decompositions are swapped in and out of the ops' ``py_kernels``, but an op
    caches the kernel it resolved; after one dynamic export in a process (torch.onnx's or ours), the next
    capture ran the cached kernel and fixed the sequence length (torch 2.13). Clearing makes each capture
    resolve the kernels registered for it.
    """
    import torch

    def clear() -> None:
        for op in (torch.ops.aten.lstm.input, torch.ops.aten.gru.input):
            with contextlib.suppress(AttributeError):
                op._dispatch_cache.clear()

    clear()
    try:
        yield
    finally:
        clear()


def _program_symbols(program: Any, specs: Sequence[InputSpec]) -> tuple[dict[tuple[str, int], str], Bounds]:
    """``(input, axis) -> symbol`` for every input axis the program keeps symbolic, and each symbol's range.

    An axis whose size is an expression of others (``2*s0``), or a symbol with one allowed value, counts as
    fixed; so do the symbols an expression uses (dynamic alone, they would break the relation).
    """
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    names = input_order(program, [spec.name for spec in specs])
    user = [placeholder_name(spec) for spec in user_input_specs(program)]
    if len(user) != len(names):
        return {}, {}
    ranges = {str(symbol): value for symbol, value in program.range_constraints.items()}
    symbols: dict[tuple[str, int], str] = {}
    tied: set[str] = set()
    for name, placeholder in zip(names, user, strict=True):
        value = placeholders[placeholder].meta.get("val")
        for axis, size in enumerate(getattr(value, "shape", ())):
            if isinstance(size, int):
                continue
            expr = size.node.expr
            if not expr.is_Symbol:
                tied.update(str(free) for free in expr.free_symbols)
                continue
            symbols[(name, axis)] = str(expr)
    bounds: Bounds = {}
    for symbol in set(symbols.values()):
        low, high = _bound(ranges.get(symbol), "lower"), _bound(ranges.get(symbol), "upper")
        if low is not None and low == high:
            tied.add(symbol)
        # NOTE: why only a lower bound above 2: 2 is torch.export's own floor (it fixes 0 and 1)
        bounds[symbol] = (low if low is not None and low > 2 else None, high)
    return {key: symbol for key, symbol in symbols.items() if symbol not in tied}, bounds


def _passing_guards(
    program: Any,
    specs: Sequence[InputSpec],
    tensors: Mapping[str, Any],
    symbols: dict[tuple[str, int], str],
    ranges: Bounds,
) -> dict[tuple[str, int], str]:
    """``symbols`` without the ones the model takes at its example size only: each symbol of an axis left to
    the model is set to another size (twice the example's, within its range) and the program's input
    guards are checked there.

    NOTE: why: torch.export keeps an axis symbolic when the model constrains it by an equation instead of a
    constant: the reference CNN's ``Flatten`` into ``Linear(1600)`` leaves height and width symbolic under
    a guard ``64 * (h'...) * (w'...) == 1600`` that the ONNX file would not keep (and that 28 and 29 meet).
    Guards read sizes only, so the inputs are meta tensors: nothing is allocated or computed.
    """
    import torch

    guards = getattr(program.module(), "_guards_fn", None)
    if guards is None:
        return symbols
    names = input_order(program, [spec.name for spec in specs])
    shapes = {name: list(tensors[name].shape) for name in names}
    must = {symbols[(s.name, axis)] for s in specs for axis, d in enumerate(s.dims) if isinstance(d, str)}
    failing = set()
    for symbol in set(symbols.values()) - must:
        axes = [key for key, value in symbols.items() if value == symbol]
        size = shapes[axes[0][0]][axes[0][1]]
        low, high = ranges.get(symbol, (None, None))
        other = 2 * size if high is None else min(2 * size, high)
        if other <= size or (low is not None and other < low):
            failing.add(symbol)
            continue
        trial = {name: list(shape) for name, shape in shapes.items()}
        for name, axis in axes:
            trial[name][axis] = other
        meta = [torch.empty(trial[name], dtype=tensors[name].dtype, device="meta") for name in names]
        try:
            guards(*meta)
        except Exception:
            failing.add(symbol)
    return {key: symbol for key, symbol in symbols.items() if symbol not in failing}


def _bound(value_range: Any, which: str) -> int | None:
    """A ``ValueRanges`` bound as an int; ``None`` for infinity or a bound out of the int64 range."""
    try:
        bound = int(getattr(value_range, which))
    except Exception:
        return None
    return bound if abs(bound) < 2**62 else None
