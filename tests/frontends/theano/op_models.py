"""A PyTensor graph that runs many of the converter's rules at once (elementwise math, integer arithmetic,
comparisons and switches, indexing with steps and integers, gathers, reductions, argmax, ranges, joins,
softmax over two axes, a full 2-D convolution), each branch its own output so that a wrong rule shows by
name."""

from __future__ import annotations

from typing import Any


def op_zoo() -> dict[str, list[Any]]:
    """``x`` float32 (batch, 6, 5) and ``k`` int64 (batch, 4) -> nine outputs."""
    import numpy as np
    import pytensor
    import pytensor.tensor as pt
    from pytensor.tensor.signal import convolve2d
    from pytensor.tensor.special import log_softmax, softmax

    x = pt.tensor("x", dtype="float32", shape=(None, 6, 5))
    k = pt.tensor("k", dtype="int64", shape=(None, 4))
    scale = pytensor.shared(np.linspace(0.5, 1.5, 5, dtype=np.float32), name="scale")
    smooth = pt.softplus(x * 8) + pt.log1p(pt.abs(x)) - pt.expm1(x / 4) + pt.sqr(pt.sin(x)) * pt.cos(x)
    smooth = smooth + pt.sigmoid(x) ** 2 + pt.erf(x) - pt.clip(x, -0.3, 0.4) * scale + pt.sqrt(pt.exp(x))
    branches = pt.switch(pt.gt(x, 0.1) & pt.le(x, 0.8), x * 3, pt.maximum(x, -0.2) / pt.minimum(-x, 2.0))
    integers = (k // 3 - k % 4) * pt.sign(k - 5) + (-k) // 2 + pt.cast(pt.eq(k, 2), "int64")
    sliced = x[:, ::-2, 1:4] + x[:, 1, None, -3:] - x[:, -1:0:-2, ::2][:, :, 0:1]
    rows = (
        x[:, pt.arange(5, -1, -2)][:, :, 0]
        + x[:, :, pt.constant(np.array([[4, 0], [1, 1]]))].sum(axis=(2, 3))[:, 1:4]
    )
    stats = pt.stack([x.sum(axis=(1, 2)), x.max(axis=1).min(axis=1), x.prod(axis=2).mean(axis=1)], axis=1)
    picked = pt.argmax(x, axis=2) + pt.argmin(x.reshape((x.shape[0], -1)), axis=1)[:, None]
    taps = pytensor.shared(np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), name="taps", shape=(2, 2))
    blurred = convolve2d(x, taps, mode="full")  # (batch, 7, 6): the data zero-padded, the kernel flipped
    normed = softmax(x, axis=(1, 2)) + log_softmax(x, axis=1) + pt.zeros((x.shape[0], 1, 5), "float32")
    return {
        "inputs": [x, k],
        "outputs": [smooth, branches, integers, sliced, rows, stats, picked, normed, blurred],
    }
