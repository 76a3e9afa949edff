"""PyTensor ``scan`` forms beyond the Elman RNN of ``fixtures/models/theano_models.py``: several states and a
per-step output with explicit non-sequences, a scan driven by a step count alone, and one that stops on a
condition (which ONNX ``Scan`` cannot express)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.scan.utils import until as until_condition

SEED = 0


def _shared(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> Any:
    return pytensor.shared((rng.standard_normal(shape) * 0.4).astype(np.float32), name=name, shape=shape)


def two_scans() -> dict[str, list[Any]]:
    """``x`` (batch, time, 4) -> (batch, 6): a scan over time carrying two states (a tanh RNN state and a
    running sum) with a per-step output and ``non_sequences``, then a scan of 3 steps with no sequence that
    iterates on the last state."""
    rng = np.random.default_rng(SEED)
    w, u, v = _shared(rng, "w", (4, 6)), _shared(rng, "u", (6, 6)), _shared(rng, "v", (6, 6))
    x = pt.tensor("x", dtype="float32", shape=(None, None, 4))
    zeros = pt.zeros((x.shape[0], 6), dtype="float32")

    def step(x_t: Any, h: Any, total: Any, w: Any, u: Any) -> tuple[Any, Any, Any]:
        new = pt.tanh(pt.dot(x_t, w) + pt.dot(h, u))
        return new, total + new, new.max(axis=1)

    (states, totals, peaks), _ = pytensor.scan(
        step, sequences=[x.dimshuffle(1, 0, 2)], outputs_info=[zeros, zeros, None], non_sequences=[w, u]
    )
    echoes, _ = pytensor.scan(lambda z: pt.tanh(pt.dot(z, v)), outputs_info=[states[-1]], n_steps=3)
    return {"inputs": [x], "outputs": [echoes[-1] + totals[-1] * peaks.mean(axis=0)[:, None]]}


def until() -> dict[str, list[Any]]:
    """A scan that stops when its state exceeds 1 (``until``): ``x`` (batch, 4) -> (batch, 4)."""
    x = pt.tensor("x", dtype="float32", shape=(None, 4))

    def grow(h: Any) -> tuple[Any, Any]:
        bigger = h * np.float32(1.5)
        return bigger, until_condition(pt.max(bigger) > 1)

    states, _ = pytensor.scan(grow, outputs_info=[x], n_steps=10)
    return {"inputs": [x], "outputs": [states[-1]]}
