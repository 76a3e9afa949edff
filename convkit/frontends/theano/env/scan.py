"""``pytensor.scan`` to ONNX: the ``Scan`` op as an ONNX ``Scan`` whose body is the step function converted by
the same converter, and the ops that build scan's state buffers (``AllocEmpty``, ``IncSubtensor``).

Runs in the Theano environment only (pytensor, numpy, onnx; never convkit). ``converter.py`` loads this file
by path and hands itself in as ``converter`` (its ``Graph``, handlers and errors).

NOTE: why ONNX ``Scan`` and not ``Loop``: a PyTensor scan with sequences, states fed back at tap -1
(``outputs_info=[h0]``) and per-step outputs (``outputs_info=[None]``) is exactly ONNX ``Scan``'s model:
scan inputs sliced along axis 0, state variables carried, scan outputs stacked along axis 0. ``Loop`` would
need the slicing and stacking written out. What ``Scan`` cannot express (``until`` conditions, taps other than
-1, gradients' mit_mot states, untraced states) is refused with the user's line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import helper

_HINT = (
    "write the recurrence with sequences, outputs_info states (taps -1 only, the default) and non_sequences, "
    "or unroll it in Python"
)


def _refusal(node: Any) -> str | None:
    """What this scan uses that ONNX ``Scan`` cannot express here, or None."""
    info = node.op.info
    if info.as_while:
        return "stops on a condition (until=...)"
    if info.mit_mot_in_slices:
        return "carries gradient states (mit_mot)"
    if info.mit_sot_in_slices:
        return "feeds back states at taps other than -1 (mit_sot)"
    if info.n_untraced_sit_sot:
        return "updates states it does not trace (shared or random-generator updates)"
    if node.inputs[0].type.ndim != 0:
        return "has a non-scalar step count"
    return None


def convert_scan(g: Any, node: Any, converter: Any) -> list[str]:
    """A PyTensor ``Scan`` node as an ONNX ``Scan``: its sequences trimmed to ``n_steps``, each state's
    initial value row 0 of its buffer; the outputs are the buffers as PyTensor has them (the initial state,
    then one row per step) and the per-step outputs stacked.

    Raises:
        ConversionError: the scan uses what ONNX ``Scan`` cannot express, or its step function an op without
            a rule.
    """
    op = node.op
    reason = _refusal(node)
    if reason is not None:
        # NOTE: why no variable or line here: ``convert`` adds the scan's output and the user's line
        raise converter.ConversionError(
            f"the converter cannot express this PyTensor Scan in ONNX: it {reason}", _HINT
        )
    outer = node.inputs
    steps = g.unsqueeze(g.cast(g.name(outer[0]), converter.dtype_of(outer[0]), "int64"), [0])
    zero = g.ints([0])
    # NOTE: why trimmed: PyTensor runs n_steps steps over sequences that may be longer; ONNX Scan runs over
    # the whole sequence
    sequences = [g.add("Slice", [g.name(v), zero, steps, zero]) for v in op.outer_seqs(outer)]
    if not sequences:
        # NOTE: why a counter: ONNX Scan needs one scan input to know its length; the body never reads it
        sequences = [
            g.add(
                "Range",
                [g.const(np.asarray(0, np.int64)), g.squeeze(steps, [0]), g.const(np.asarray(1, np.int64))],
            )
        ]
    initial = [
        g.add("Gather", [g.name(v), g.const(np.asarray(0, np.int64))], axis=0) for v in op.outer_sitsot(outer)
    ]

    body = converter.Graph(g.opset)
    body.taken = g.taken  # NOTE: why shared: a body's names must not shadow the outer graph's
    body.names.update(
        {
            inner: g.name(v)
            for inner, v in zip(op.inner_non_seqs(op.inner_inputs), op.outer_non_seqs(outer), strict=True)
        }
    )
    body_inputs = []
    inner_seqs = op.inner_seqs(op.inner_inputs) or [None]
    for var in [*op.inner_sitsot(op.inner_inputs), *inner_seqs]:
        name = body.fresh(var.name or "step_input") if var is not None else body.fresh("step_index")
        if var is not None:
            body.bind(var, name)
        dtype = converter.dtype_of(var) if var is not None else "int64"
        dims = list(var.type.shape) if var is not None else []
        body_inputs.append(helper.make_tensor_value_info(name, converter.onnx_type(dtype), dims))
    for inner_node in op.fgraph.toposort():
        handler = converter.handler_for(inner_node.op)
        if handler is None:
            var = inner_node.outputs[0]
            raise converter.ConversionError(
                f"the converter has no rule for the PyTensor op {inner_node.op} "
                f"({type(inner_node.op).__name__}) in a Scan's step function, which computes "
                f"{var.name or var} ({var.type})",
                "write the step function with supported ops (elementwise math, dot/matmul, reductions, "
                "softmax, indexing, reshape/dimshuffle, join)",
            )
        for var, result in zip(inner_node.outputs, handler(body, inner_node), strict=True):
            body.bind(var, result)
    sitsot_outs = op.inner_sitsot_outs(op.inner_outputs)
    nitsot_outs = op.inner_nitsot_outs(op.inner_outputs)
    # NOTE: why an Identity for each: a body output must be a value of its own, and a state is output twice
    # (carried, and stacked into PyTensor's buffer)
    returned = [*sitsot_outs, *sitsot_outs, *nitsot_outs]
    body_outputs = []
    for var in returned:
        name = body.add("Identity", [body.name(var)], hint="step_output")
        body_outputs.append(
            helper.make_tensor_value_info(name, converter.onnx_type(converter.dtype_of(var)), None)
        )
    graph = helper.make_graph(body.nodes, g.fresh("scan_body"), body_inputs, body_outputs, body.initializers)
    finals = [g.fresh("scan_final") for _ in sitsot_outs]
    stacked = [g.fresh("scan_stacked") for _ in [*sitsot_outs, *nitsot_outs]]
    g.nodes.append(
        helper.make_node(
            "Scan", [*initial, *sequences], [*finals, *stacked], num_scan_inputs=len(sequences), body=graph
        )
    )
    buffers = [
        g.add("Concat", [g.unsqueeze(first, [0]), rows], axis=0)
        for first, rows in zip(initial, stacked[: len(sitsot_outs)], strict=True)
    ]
    return [*buffers, *stacked[len(sitsot_outs) :]]


def alloc_empty(g: Any, node: Any, converter: Any) -> list[str]:
    """``AllocEmpty`` (scan's uninitialized buffers) as zeros of its shape.

    NOTE: why zeros: PyTensor leaves the memory undefined and writes every row it reads; any value computes
    the same, and zeros keep the file deterministic.
    """
    dtype = converter.dtype_of(node.outputs[0])
    target = converter.int_vector(g, node.inputs)
    return [g.add("Expand", [g.const(np.zeros((), dtype)), target])]


def inc_subtensor(g: Any, node: Any, converter: Any) -> list[str]:
    """``set_subtensor`` / ``inc_subtensor`` of a slice along the first axis (how scan writes a state's
    initial value into its buffer): the rows before, the new rows, the rows after, concatenated."""
    from pytensor.tensor.subtensor import indices_from_subtensor

    x, y, *index_inputs = node.inputs
    indices = indices_from_subtensor(index_inputs, node.op.idx_list)
    rest = indices[1:]
    if (
        not indices
        or not isinstance(indices[0], slice)
        or indices[0].step not in (None, 1)
        or any(index != slice(None) for index in rest)
    ):
        raise converter.ConversionError(
            f"{node.op} writes an integer index or a slice of a later axis; the converter writes slices of "
            "the first axis only",
            "index the first axis with a slice (x[a:b]), or build the tensor with join",
        )
    start, stop = indices[0].start, indices[0].stop
    name = g.name(x)
    zero = g.ints([0])
    low = converter.int_vector(g, [0 if start is None else start])
    high = converter.int_vector(g, [converter.INT64_MAX if stop is None else stop])
    before = g.add("Slice", [name, zero, low, zero])
    middle = g.add("Slice", [name, low, high, zero])
    after = g.add("Slice", [name, high, g.ints([converter.INT64_MAX]), zero])
    value = g.cast(g.name(y), converter.dtype_of(y), converter.dtype_of(x))
    if not node.op.set_instead_of_inc:
        value = g.add("Add", [middle, value])
    value = g.add("Expand", [value, g.add("Shape", [middle])])
    return [g.add("Concat", [before, value, after], axis=0)]
