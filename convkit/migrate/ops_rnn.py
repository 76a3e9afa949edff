"""ONNX ``LSTM`` -> ``nn.LSTM``: gate blocks reordered from ONNX's (i, o, f, c) to torch's (i, f, g, o)."""

from __future__ import annotations

from typing import Any

import numpy as np

from convkit.migrate.emit import Emitter, module_hint, unsupported
from convkit.migrate.ops_layers import attrs

_ONNX_TO_TORCH = (0, 2, 3, 1)  # torch block k is ONNX block _ONNX_TO_TORCH[k]: i, f, c(g), o


def _reorder(array: np.ndarray, hidden: int) -> np.ndarray:
    blocks = [array[k * hidden : (k + 1) * hidden] for k in range(4)]
    return np.concatenate([blocks[k] for k in _ONNX_TO_TORCH])


def lstm(e: Emitter, node: Any) -> None:
    a = attrs(node)
    names = list(node.input) + [""] * (8 - len(node.input))
    w, r = e.const(names[1]), e.const(names[2])
    b = e.const(names[3]) if names[3] else None
    direction = a.get("direction", "forward")
    if w is None or r is None or (names[3] and b is None):
        raise unsupported(node, "its weights are computed in the graph")
    if names[4] or names[7] or direction == "reverse" or a.get("clip") or a.get("input_forget", 0):
        raise unsupported(node, "sequence_lens, peepholes, clip, input_forget or a reverse-only direction")
    if (
        a.get("activations", ["Sigmoid", "Tanh", "Tanh"] * w.shape[0])
        != ["Sigmoid", "Tanh", "Tanh"] * w.shape[0]
    ):
        raise unsupported(node, f"activations {a['activations']}")
    hidden, inputs = int(a["hidden_size"]), w.shape[2]
    batch_first = int(a.get("layout", 0)) == 1
    bidirectional = direction == "bidirectional"
    weights: dict[str, np.ndarray] = {}
    for d, suffix in enumerate(["", "_reverse"][: w.shape[0]]):
        bias = np.zeros(8 * hidden, w.dtype) if b is None else b[d]
        weights[f"weight_ih_l0{suffix}"] = _reorder(w[d], hidden)
        weights[f"weight_hh_l0{suffix}"] = _reorder(r[d], hidden)
        weights[f"bias_ih_l0{suffix}"] = _reorder(bias[: 4 * hidden], hidden)
        weights[f"bias_hh_l0{suffix}"] = _reorder(bias[4 * hidden :], hidden)
    constructor = f"nn.LSTM({inputs}, {hidden}, batch_first={batch_first}, bidirectional={bidirectional})"
    attr = e.module(module_hint(node, e.source_of(names[1])), constructor, weights)
    x = e.tensor(names[0])
    state = f", ({e.tensor(names[5])}, {e.tensor(names[6])})" if names[5] and names[6] else ""
    if bool(names[5]) != bool(names[6]):
        raise unsupported(node, "only one of initial_h and initial_c")
    outputs = list(node.output) + [""] * (3 - len(node.output))
    if batch_first and state:
        raise unsupported(node, "initial states with layout=1")
    y_var, h_var, c_var = (e.fresh(f"{node.name or 'lstm'}_{k}") for k in ("y", "h", "c"))
    e.forward_lines.append(f"{y_var}, ({h_var}, {c_var}) = self.{attr}({x}{state})")
    dirs = 2 if bidirectional else 1
    # NOTE: why the reshape: torch gives Y as (seq, batch, dirs * hidden), ONNX as (seq, dirs, batch, hidden)
    if outputs[0]:
        if batch_first:
            e.assign(outputs[0], f"{y_var}.reshape({y_var}.shape[0], {y_var}.shape[1], {dirs}, {hidden})", 4)
        else:
            e.assign(outputs[0], f"{y_var}.reshape({y_var}.shape[0], {y_var}.shape[1], {dirs}, {hidden})"
                     ".permute(0, 2, 1, 3)", 4)  # fmt: skip
    for output, var in ((outputs[1], h_var), (outputs[2], c_var)):
        if output:
            e.assign(output, var if not batch_first else f"{var}.transpose(0, 1)", 3)
