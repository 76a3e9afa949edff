"""Pair PyTorch module activations with the ONNX values that compute them (``verify --localize`` against
the framework itself).

The activations come from forward hooks on every module of an eager run. Which ONNX value holds a module's
output is read off the exported file: the torch.export-based exporter records on each node the module
stack it was traced in (``pkg.torch.onnx.name_scopes``: ``['', 'encoder', 'encoder.layers.0', 'linear_3']``,
the module paths outermost first, then the torch.export node's own name); the TorchScript exporter writes
the module path into node names instead (``/encoder/layers.0/Gemm``), and is read from those.

NOTE: why the ONNX file's own records and not values: the file under investigation may be the faulty one,
so its values prove nothing; its structure and metadata are what the exporter wrote, and a planted fault
(a changed weight, a swapped operator) leaves them alone. Every pairing is still checked by shape, and
whatever is unclear is left out, so that a faithful export never looks wrong.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from convkit.frontends.base import LayerOutput

_SCOPE_KEY = "pkg.torch.onnx.name_scopes"
# NOTE: why: these read a tensor's shape, never its values; a value read outside its module only by them is
# no output of that module (torch.export's ``sym_size`` nodes and CSE move them anywhere).
_SHAPE_READERS = frozenset({"Shape", "Size"})
# values exposed per onnxruntime run when a declared shape is missing (bounds memory)
_VALUES_PER_RUN = 64


@dataclass(frozen=True)
class _NodeScope:
    """Where one ONNX node came from.

    ``modules`` are the enclosing module paths, outermost first (the root module, ``""``, left out);
    ``calls`` the call index of each where the exporter recorded it (TorchScript's ``/pool_1/`` is the
    second call of ``pool``), else ``None``; ``op`` names the node itself: torch.export's node name
    (``relu_2``) or the last part of a TorchScript node name (``Relu_2``).
    """

    modules: tuple[str, ...]
    calls: tuple[int | None, ...]
    op: str


@dataclass
class _Event:
    """One hook call: a module's inputs (``kind == "input"``) or outputs, as NumPy copies."""

    kind: str
    path: str
    call: int
    arrays: list[np.ndarray]


@dataclass
class _Graph:
    """The facts about the ONNX graph the pairing needs, computed once."""

    nodes: list[Any]
    scopes: list[_NodeScope | None]
    producer: dict[str, int]
    consumers: dict[str, list[int]]
    outputs: list[str]
    shapes: dict[str, tuple[list[int | str | None] | None, int]]


def layer_outputs(model: Any, onnx_model: Any, inputs: Mapping[str, np.ndarray]) -> list[LayerOutput]:
    """Each module's activation for ``inputs``, in execution order, paired with the value of ``onnx_model``
    (exported from ``model``) that computes the same tensor; see :meth:`TorchFrontend.layer_outputs`.

    Args:
        model: an ``nn.Module`` (ExportedPrograms and TorchScript modules give an empty list: they have no
            module hooks to read activations with).
        onnx_model: the ``onnx.ModelProto`` under investigation.
        inputs: the ONNX model's inputs by name (the names ``model``'s ``forward`` takes).

    Returns:
        Pairs in execution order, one per ONNX value; empty when the file records no module scopes.
    """
    import torch

    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return []
    module_paths = {name for name, _ in model.named_modules()}
    graph = _read_graph(onnx_model.graph, module_paths)
    if graph is None:
        return []
    plans = _plan(graph, module_paths)
    run = _capture(model, inputs, plans)
    shapes = _ShapeCheck(graph, onnx_model, inputs)
    wanted = _pairings(graph, plans, run.events, shapes)
    if shapes.measure():
        wanted = _pairings(graph, plans, run.events, shapes)
    pairs: list[LayerOutput] = []
    taken: set[str] = set()
    for kind, label, value, array in wanted:
        # NOTE: why the first pairing of a value wins: hooks fire innermost first, so a container that
        # returns its last child's tensor, or a module fed by the previous module's output, repeats a value
        # already paired with the module that computed it.
        if value in taken or run.absorbed_near(kind, array):
            continue
        taken.add(value)
        pairs.append(LayerOutput(layer=label, onnx_value=value, value=array))
    return pairs


# ====================================================================================== reading the graph
def _read_graph(graph: Any, module_paths: set[str]) -> _Graph | None:
    """The graph's nodes with their scopes; ``None`` when no node records one."""
    nodes = list(graph.node)
    if any(prop.key == _SCOPE_KEY for node in nodes for prop in node.metadata_props):
        scopes = [_dynamo_scope(node) for node in nodes]
    else:
        scopes = [_torchscript_scope(node.name, module_paths) for node in nodes]
    if not any(scope is not None for scope in scopes):
        return None
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.output:
            if name:
                producer[name] = index
        for name in dict.fromkeys(node.input):
            if name:
                consumers.setdefault(name, []).append(index)
    shapes: dict[str, tuple[list[int | str | None] | None, int]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        dims: list[int | str | None] | None = None
        if tensor_type.HasField("shape"):
            dims = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tensor_type.shape.dim
            ]
        shapes[value.name] = (dims, tensor_type.elem_type)
    return _Graph(nodes, scopes, producer, consumers, [value.name for value in graph.output], shapes)


def _dynamo_scope(node: Any) -> _NodeScope | None:
    """The scope torch.export recorded: ``['', 'conv1', 'conv2d']`` is node ``conv2d`` in module ``conv1``.

    A node the optimizer made without metadata has no scope (``None``). torch.export marks nodes outside
    every module (its ``sym_size`` reads) with a stack named ``_empty_nn_module_stack_from_metadata_hook``:
    those belong to the root.
    """
    text = next((prop.value for prop in node.metadata_props if prop.key == _SCOPE_KEY), None)
    if text is None:
        return None
    try:
        parts = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(parts, list | tuple) or not parts or not all(isinstance(p, str) for p in parts):
        return None
    modules = tuple(parts[1:-1]) if parts[0] == "" else ()
    return _NodeScope(modules, (None,) * len(modules), parts[-1])


def _torchscript_scope(name: str, module_paths: set[str]) -> _NodeScope | None:
    """The scope in a TorchScript node name: ``/blocks.0/seq/seq.0/MatMul`` is in ``blocks.0``,
    ``blocks.0.seq`` and ``blocks.0.seq.0``; ``/pool_1/MaxPool`` is in the second call of ``pool``.

    NOTE: why each part is tried against every enclosing path: the exporter names a container's child
    relative to the container's parent (``seq.0`` under ``seq``), a plain child by its attribute name.
    """
    if not name.startswith("/"):
        return None
    *parts, op = name[1:].split("/")
    chain: list[str] = []
    calls: list[int | None] = []
    for part in parts:
        resolved = _resolve(part, chain, module_paths)
        call = 0
        if resolved is None:
            repeated = re.fullmatch(r"(.+)_(\d+)", part)
            if repeated:
                resolved = _resolve(repeated.group(1), chain, module_paths)
                call = int(repeated.group(2))
        if resolved is None:
            return None
        chain.append(resolved)
        calls.append(call)
    return _NodeScope(tuple(chain), tuple(calls), op)


def _resolve(part: str, chain: Sequence[str], module_paths: set[str]) -> str | None:
    inside = chain[-1] if chain else ""
    for base in [*reversed(chain), ""]:
        path = f"{base}.{part}" if base else part
        if path in module_paths and (not inside or path.startswith(inside + ".")):
            return path
    return None


# ===================================================================================== what to look for
@dataclass
class _Plan:
    """One module's ONNX node groups, one per call (in call order)."""

    groups: list[list[int]]


def _plan(graph: _Graph, module_paths: Iterable[str]) -> dict[str, _Plan]:
    """For each module with nodes in the graph, the nodes of each of its calls.

    A module called once owns every node in its scope. For one called several times (a shared ``pool``),
    the calls are told apart by the call index in TorchScript names, else by splitting its nodes into
    connected pieces, in graph order; the count is checked against the eager run's later.
    """
    members: dict[str, list[int]] = {}
    for index, scope in enumerate(graph.scopes):
        if scope is None:
            continue
        for path in scope.modules:
            members.setdefault(path, []).append(index)
    plans: dict[str, _Plan] = {}
    for path in module_paths:
        nodes = members.get(path)
        if not path or not nodes:
            continue
        plans[path] = _Plan(_calls(graph, path, nodes))
    return plans


def _calls(graph: _Graph, path: str, nodes: list[int]) -> list[list[int]]:
    recorded: dict[int, list[int]] = {}
    for index in nodes:
        scope = graph.scopes[index]
        assert scope is not None
        call = scope.calls[scope.modules.index(path)]
        if call is None:
            recorded = {}
            break
        recorded.setdefault(call, []).append(index)
    if recorded:
        return [recorded[call] for call in sorted(recorded)]
    return _connected(graph, nodes)


def _connected(graph: _Graph, nodes: list[int]) -> list[list[int]]:
    """``nodes`` split into weakly connected pieces (edges between them only), ordered by first node."""
    parent = {index: index for index in nodes}

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for index in nodes:
        for name in graph.nodes[index].input:
            source = graph.producer.get(name)
            if source in parent:
                parent[root(index)] = root(source)
    pieces: dict[int, list[int]] = {}
    for index in nodes:
        pieces.setdefault(root(index), []).append(index)
    return sorted(pieces.values(), key=lambda piece: piece[0])


# ============================================================================================ the eager run
@dataclass
class _Run:
    """What the hooks saw: the planned modules' events in execution order, and the inputs and outputs of
    absorbed modules (see :meth:`absorbed_near`)."""

    events: list[_Event]
    absorbed_inputs: list[np.ndarray]
    absorbed_outputs: list[np.ndarray]

    def absorbed_near(self, kind: str, array: np.ndarray) -> bool:
        """Whether a pairing of ``kind`` holding ``array`` borders a module the exporter folded away.

        NOTE: why: a module that ran, changed its input, and has no node of its own in the graph (a
        BatchNorm folded into the Conv before it) was fused into a neighbour. The TorchScript exporter
        names the fused node after the module upstream, whose output value then holds the absorbed
        module's result; the torch.export-based one keeps the downstream module's scope, whose nodes then
        read the absorbed module's input. Either pairing would make a faithful export look wrong.
        """
        if kind == "output":
            return any(_same(array, other) for other in self.absorbed_inputs)
        if kind == "input":
            return any(_same(array, other) for other in self.absorbed_outputs)
        return False


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


def _tensors(value: Any) -> list[Any]:
    """The tensors in a hook's arguments or results (nested sequences and mappings), in order."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for item in value.values() for t in _tensors(item)]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def _capture(model: Any, inputs: Mapping[str, np.ndarray], plans: Mapping[str, _Plan]) -> _Run:
    """Run ``model`` once (eval mode, no gradients) with hooks on every module.

    A planned module whose number of calls differs from its plan's is dropped (its calls cannot be told
    apart). A module without a plan is only checked for having been absorbed.
    """
    import torch

    from convkit.frontends.torch import _call_arguments, _callable, _to_numpy

    run = _Run([], [], [])
    counts: dict[str, int] = {}
    handles = []

    def arrays(tensors: Sequence[Any]) -> list[np.ndarray] | None:
        """NumPy copies, ``None`` for a dtype NumPy lacks (bfloat16).

        NOTE: why a copy now: a later in-place operation (ReLU(inplace=True)) would change the tensor.
        """
        try:
            return [np.array(_to_numpy(tensor), copy=True) for tensor in tensors]
        except (TypeError, RuntimeError):
            return None

    def wanted(path: str, call: int) -> bool:
        return path == "" or (path in plans and call < len(plans[path].groups))

    def record(kind: str, path: str, call: int, tensors: Sequence[Any]) -> None:
        copies = arrays(tensors)
        if copies is not None:
            run.events.append(_Event(kind, path, call, copies))

    def before(path: str) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            call = counts.get(path, 0)
            if path and wanted(path, call):
                record("input", path, call, _tensors((args, kwargs)))

        return hook

    def after(path: str) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            call = counts.get(path, 0)
            counts[path] = call + 1
            if wanted(path, call):
                record("output", path, call, _tensors(output))
                return
            if path in plans:
                return
            received, returned = _tensors((args, kwargs)), _tensors(output)
            unchanged = any(
                a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
                for a in returned
                for b in received
            )
            if received and returned and not unchanged:
                run.absorbed_inputs.extend(arrays(received) or [])
                run.absorbed_outputs.extend(arrays(returned) or [])

        return hook

    target = _callable(model)
    args, kwargs = _call_arguments(model, inputs)
    try:
        for path, module in target.named_modules():
            if path in plans or not path:
                handles.append(module.register_forward_pre_hook(before(path), with_kwargs=True))
            handles.append(module.register_forward_hook(after(path), with_kwargs=True))
        with torch.no_grad():
            target(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    run.events = [
        event
        for event in run.events
        if not event.path or counts.get(event.path) == len(plans[event.path].groups)
    ]
    return run


# ================================================================================================ pairing
def _pairings(
    graph: _Graph, plans: Mapping[str, _Plan], events: Sequence[_Event], shapes: _ShapeCheck
) -> list[tuple[str, str, str, np.ndarray]]:
    """(kind, label, ONNX value, activation) in execution order; ``kind`` is ``output`` (a module's
    output), ``input`` (a module's input, labelled after the node computing it) or ``model`` (an output
    of the whole model, likewise)."""
    found: list[tuple[str, str, str, np.ndarray]] = []
    for event in events:
        if not event.path:
            if event.kind == "output" and len(event.arrays) == len(graph.outputs):
                for name, array in zip(graph.outputs, event.arrays, strict=True):
                    label = _producer_label(graph, name)
                    if label is not None and shapes.fits(name, array):
                        found.append(("model", label, name, array))
            continue
        group = plans[event.path].groups[event.call]
        if event.kind == "output":
            value = _output_value(graph, group, event.arrays, shapes)
            if value is not None:
                calls = len(plans[event.path].groups)
                label = event.path if calls == 1 else f"{event.path} (call {event.call + 1})"
                found.append(("output", label, value, event.arrays[0]))
        else:
            for value, array in _input_values(graph, group, event.arrays, shapes):
                label = _producer_label(graph, value)
                if label is not None:
                    found.append(("input", label, value, array))
    return found


def _output_value(
    graph: _Graph, group: Sequence[int], arrays: Sequence[np.ndarray], shapes: _ShapeCheck
) -> str | None:
    """The value holding a module call's output: among the values its nodes compute, the last one (graph
    order) read outside them or returned by the graph, whose shape fits.

    NOTE: why this rule: a module's nodes can only hand a tensor to the rest of the graph by returning it, so
    every value read outside its scope (shape reads aside) is an output; a module returning one tensor has
    one, unless the exporter's optimizer shared an intermediate across scopes, and then the returned tensor
    is the one computed last. The optimizer keeps the metadata of the node whose result survives a fusion
    (a BatchNorm folded into the Conv before it leaves the Conv in the BatchNorm's scope, and the
    convolution module with no nodes), so scopes stay honest. A value read by a node without metadata makes
    the module unclear: that node may have been part of it.
    """
    if len(arrays) != 1:
        return None
    inside = set(group)
    returned = set(graph.outputs)
    escaping: list[str] = []
    for index in group:
        for name in graph.nodes[index].output:
            if not name:
                continue
            readers = [r for r in graph.consumers.get(name, []) if r not in inside]
            if any(graph.scopes[r] is None for r in readers):
                return None
            if name in returned or any(graph.nodes[r].op_type not in _SHAPE_READERS for r in readers):
                escaping.append(name)
    return next((name for name in reversed(escaping) if shapes.fits(name, arrays[0])), None)


def _input_values(
    graph: _Graph, group: Sequence[int], arrays: Sequence[np.ndarray], shapes: _ShapeCheck
) -> list[tuple[str, np.ndarray]]:
    """Values computed elsewhere and read by a module call's nodes, paired with the module's input tensors
    where exactly one such value fits a tensor's shape and dtype.

    NOTE: why inputs at all: functional calls (``torch.relu``, ``x.permute``) have no module and no hook;
    the tensor a module receives is their result, so a fault in them is found at the next module's input
    and named after the node that computed it.
    """
    inside = set(group)
    read: list[str] = []
    for index in group:
        if graph.nodes[index].op_type in _SHAPE_READERS:
            continue
        for name in graph.nodes[index].input:
            source = graph.producer.get(name)
            if source is None or source in inside or graph.nodes[source].op_type == "Constant":
                continue
            if name not in read:
                read.append(name)
    found = []
    for array in arrays:
        fitting = [name for name in read if shapes.fits(name, array)]
        if len(fitting) == 1:
            found.append((fitting[0], array))
    return found


def _producer_label(graph: _Graph, value: str) -> str | None:
    """The name of the node computing ``value``, inside its innermost module: ``relu_2``, ``blocks.0.add``."""
    index = graph.producer.get(value)
    if index is None:
        return None
    scope = graph.scopes[index]
    if scope is None:
        return None
    return f"{scope.modules[-1]}.{scope.op}" if scope.modules else scope.op


# =================================================================================================== shapes
class _ShapeCheck:
    """Whether an activation has a value's shape and dtype: as the file declares it, else as onnxruntime
    measures it on the same inputs.

    NOTE: why declared shapes first: they are what the exporter meant, and stay right when a planted fault
    (a flipped Transpose) changes what the file computes. Why measured ones second: TorchScript files
    declare no intermediate shapes, and torch.export can record a symbolic dim as the example's size (an
    LSTM's sequence length). Only values whose declared shape did not fit are measured, in one batched run
    after a first pass (:meth:`measure`); only their shapes and dtypes are read, never their values.
    """

    def __init__(self, graph: _Graph, onnx_model: Any, inputs: Mapping[str, np.ndarray]) -> None:
        self.graph = graph
        self.onnx_model = onnx_model
        self.inputs = inputs
        self.bindings = _symbol_bindings(onnx_model.graph, inputs)
        self.measured: dict[str, tuple[tuple[int, ...], np.dtype[Any]] | None] = {}
        self.misses: list[str] = []

    def fits(self, name: str, array: np.ndarray) -> bool:
        """Whether ``array`` fits value ``name`` (a miss is remembered for :meth:`measure`)."""
        if _fits_declared(self.graph.shapes.get(name), array, self.bindings):
            return True
        if name in self.measured:
            measured = self.measured[name]
            return measured is not None and measured == (array.shape, array.dtype)
        if name not in self.misses:
            self.misses.append(name)
        return False

    def measure(self) -> bool:
        """Measure the missed values' shapes in onnxruntime; whether there was anything to measure.

        A value onnxruntime cannot expose stays unmeasured and fits nothing.
        """
        from convkit.diagnose.localize import onnxruntime_evaluator

        todo = [name for name in self.misses if name not in self.measured]
        if not todo:
            return False
        evaluate = onnxruntime_evaluator(self.onnx_model)
        feeds = {name: np.asarray(value) for name, value in self.inputs.items()}
        for start in range(0, len(todo), _VALUES_PER_RUN):
            chunk = todo[start : start + _VALUES_PER_RUN]
            try:
                computed = evaluate(chunk, feeds)
            except Exception:  # NOTE: why broad: a value that cannot be exposed only loses its pairing
                self.measured.update(dict.fromkeys(chunk))
                continue
            for name, value in zip(chunk, computed, strict=True):
                array = np.asarray(value)
                self.measured[name] = (array.shape, array.dtype)
        return True


def _symbol_bindings(graph: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Symbolic input dims bound to the sizes fed (``batch`` -> 2)."""
    bound: dict[str, int] = {}
    for value in graph.input:
        if value.name not in inputs:
            continue
        shape = np.shape(inputs[value.name])
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param and axis < len(shape):
                bound.setdefault(dim.dim_param, int(shape[axis]))
    return bound


def _fits_declared(
    declared: tuple[list[int | str | None] | None, int] | None,
    array: np.ndarray,
    bindings: Mapping[str, int],
) -> bool:
    """Whether ``array`` has the declared rank, static dims, bound symbolic dims and dtype (an undeclared
    shape or dtype fits nothing: it is measured instead)."""
    import onnx

    if declared is None:
        return False
    dims, elem_type = declared
    if dims is None or not elem_type or len(dims) != array.ndim:
        return False
    for dim, size in zip(dims, array.shape, strict=True):
        if isinstance(dim, int) and dim > 0 and dim != size:
            return False
        if isinstance(dim, str) and dim in bindings and bindings[dim] != size:
            return False
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    except (KeyError, ValueError, TypeError):
        return False
    return bool(np.dtype(dtype) == array.dtype)
