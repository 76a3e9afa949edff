"""Outputs whose comparison cannot fail: the reference is constant over every input sample, all NaN, or all
zero. A model with wrong weights that computes the same degenerate output passes such a check, so the report
says so instead of letting PASS speak for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from convkit.core.compare import ParityWarning

# NOTE: why a few ulps of the output's scale, not exact equality: the same constant computed for a batch of 1
# and a batch of 3 may take other kernels and differ in the last bit; a real output that varies with its input
# varies by far more.
_CONSTANT_ULPS = 8


def degenerate_outputs(
    checks: Sequence[tuple[str, Mapping[str, np.ndarray], Mapping[str, Any]]],
) -> list[ParityWarning]:
    """One warning per float output whose expected values cannot tell a right model from a wrong one.

    Args:
        checks: (data set label, inputs, expected outputs) as verify compares them.

    Returns:
        Warnings, in output order: ``all-nan``, else ``all-zero``, else ``constant`` (every input sample gives
        the same values, judged only where at least two samples have different inputs).
    """
    names = list(dict.fromkeys(name for _, _, expected in checks for name in expected))
    found = []
    for name in names:
        arrays = [np.asarray(expected[name]) for _, _, expected in checks if name in expected]
        if not arrays or any(a.dtype.kind not in "fc" or a.size == 0 for a in arrays):
            continue
        if all(np.isnan(a).all() for a in arrays):
            kind, what = "all-nan", "every value is NaN"
        elif all(not a.any() for a in arrays):
            kind, what = "all-zero", "every value is 0"
        elif _constant_over_samples(arrays, [inputs for _, inputs, expected in checks if name in expected]):
            kind, what = "constant", "it is the same for every input sample"
        else:
            continue
        message = f"output {name!r} is degenerate ({what}): this check cannot detect a wrong model"
        found.append(ParityWarning(output=name, kind=kind, message=message))
    return found


def _constant_over_samples(arrays: list[np.ndarray], inputs: list[Mapping[str, np.ndarray]]) -> bool:
    """Whether every sample (a row along the batch axis, or a whole data set) has the same values, while
    the inputs of at least two samples differ."""
    samples, fed = _samples(arrays, inputs)
    if len(set(fed)) < 2:
        # NOTE: why: with one distinct input there is nothing the output could have varied with
        return False
    first = samples[0]
    scale = float(np.nanmax(np.abs(first))) if np.isfinite(first).any() else 0.0
    atol = _CONSTANT_ULPS * float(np.finfo(first.dtype).eps) * scale
    return all(
        s.shape == first.shape and np.allclose(s, first, rtol=0, atol=atol, equal_nan=True) for s in samples
    )


def _samples(
    arrays: list[np.ndarray], inputs: list[Mapping[str, np.ndarray]]
) -> tuple[list[np.ndarray], list[bytes]]:
    """Each sample's output and a fingerprint of its inputs. Rows along axis 0 are samples where every data
    set's output and inputs share that axis's length (a batch); otherwise each data set is one sample."""
    batched = all(
        a.ndim >= 1 and all(np.ndim(v) >= 1 and np.shape(v)[0] == a.shape[0] for v in feeds.values())
        for a, feeds in zip(arrays, inputs, strict=True)
    )
    samples: list[np.ndarray] = []
    fed: list[bytes] = []
    for array, feeds in zip(arrays, inputs, strict=True):
        values = [np.asarray(feeds[k]) for k in sorted(feeds)]
        if batched:
            samples += list(array)
            fed += [_digest(v[row] for v in values) for row in range(array.shape[0])]
        else:
            samples.append(array)
            fed.append(_digest(values))
    return samples, fed


def _digest(values: Any) -> bytes:
    digest = hashlib.sha256()
    for value in values:
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.digest()
