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

The graph is read in ``layer_scopes``, activations are checked against ONNX values' shapes in
``layer_shapes``; this module runs the model with hooks and pairs what they saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from convkit.frontends.base import LayerOutput
from convkit.frontends.torch._common import call_arguments, callable_model, to_numpy
from convkit.frontends.torch.layer_scopes import Graph, Plan, plan_calls, read_graph
from convkit.frontends.torch.layer_shapes import ShapeCheck

# NOTE: why: these read a tensor's shape, never its values; a value read outside its module only by them is
# no output of that module (torch.export's ``sym_size`` nodes and CSE move them anywhere).
_SHAPE_READERS = frozenset({"Shape", "Size"})


@dataclass
class _Event:
    """One hook call: a module's inputs (``kind == "input"``) or outputs, as NumPy copies."""

    kind: str
    path: str
    call: int
    arrays: list[np.ndarray]


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
    graph = read_graph(onnx_model.graph, module_paths)
    if graph is None:
        return []
    plans = plan_calls(graph, module_paths)
    run = _capture(model, inputs, plans)
    shapes = ShapeCheck(graph, onnx_model, inputs)
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


def _capture(model: Any, inputs: Mapping[str, np.ndarray], plans: Mapping[str, Plan]) -> _Run:
    """Run ``model`` once (eval mode, no gradients) with hooks on every module.

    A planned module whose number of calls differs from its plan's is dropped (its calls cannot be told
    apart). A module without a plan is only checked for having been absorbed.
    """
    import torch

    run = _Run([], [], [])
    counts: dict[str, int] = {}
    handles = []

    def arrays(tensors: Sequence[Any]) -> list[np.ndarray] | None:
        """NumPy copies, ``None`` for a dtype NumPy lacks (bfloat16).

        NOTE: why a copy now: a later in-place operation (ReLU(inplace=True)) would change the tensor.
        """
        try:
            return [np.array(to_numpy(tensor), copy=True) for tensor in tensors]
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

    target = callable_model(model)
    args, kwargs = call_arguments(model, inputs)
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
    graph: Graph, plans: Mapping[str, Plan], events: Sequence[_Event], shapes: ShapeCheck
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
    graph: Graph, group: Sequence[int], arrays: Sequence[np.ndarray], shapes: ShapeCheck
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
    graph: Graph, group: Sequence[int], arrays: Sequence[np.ndarray], shapes: ShapeCheck
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


def _producer_label(graph: Graph, value: str) -> str | None:
    """The name of the node computing ``value``, inside its innermost module: ``relu_2``, ``blocks.0.add``."""
    index = graph.producer.get(value)
    if index is None:
        return None
    scope = graph.scopes[index]
    if scope is None:
        return None
    return f"{scope.modules[-1]}.{scope.op}" if scope.modules else scope.op
