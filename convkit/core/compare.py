"""Compare reference outputs with runtime outputs, producing data (a ``ParityReport``), never raising.

An element passes when ``|actual - expected| <= atol + rtol * |expected|`` (numpy.isclose). NaN in the same
place on both sides counts as equal, as do equal infinities. Integer, bool and string outputs compare exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# NOTE: why per-dtype defaults: fp32 kernels from two libraries (oneDNN vs MLAS, say) routinely differ in the
# last bits; fp16 and bf16 carry 3 and 2 significant digits, so the same bounds would fail every model.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-6),
    "float32": (1e-5, 1e-4),
    "float16": (1e-3, 1e-2),
    "bfloat16": (1e-2, 1e-2),
}


REPORT_SCHEMA = 1
"""The version of the JSON report's layout (``--report``); raised when a field changes meaning or goes."""


def default_tolerance(dtype: np.dtype[Any] | str) -> tuple[float, float]:
    """Return the documented default ``(atol, rtol)`` for outputs of ``dtype`` (exact for non-floats)."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    return DEFAULT_TOLERANCES.get(name, DEFAULT_TOLERANCES["float32"])


@dataclass
class Tolerance:
    """User overrides; ``None`` means the per-dtype default."""

    atol: float | None = None
    rtol: float | None = None

    def for_dtype(self, dtype: np.dtype[Any]) -> tuple[float, float]:
        atol, rtol = default_tolerance(dtype)
        return (atol if self.atol is None else self.atol, rtol if self.rtol is None else self.rtol)


@dataclass
class OutputComparison:
    """How one output of one data set compares. Differences are ``None`` when they are not defined
    (shape or dtype mismatch) and ``math.inf`` when NaN/inf appear on one side only."""

    name: str
    data_set: str
    passed: bool
    shape: list[int]
    expected_shape: list[int]
    dtype: str
    expected_dtype: str
    atol: float
    rtol: float
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    mismatch_fraction: float | None = None
    min_passing_atol: float | None = None
    cosine_similarity: float | None = None
    reason: str | None = None
    runtime: str = ""
    """The runtime configuration (``cuda``, ``cpu/disabled``) when a report covers several, else empty."""

    def to_dict(self) -> dict[str, Any]:
        return {key: _json_number(value) for key, value in self.__dict__.items()}


@dataclass
class ParityReport:
    """The result of a verification: every output of every data set, plus what happened on the way."""

    model: str
    reference: str
    provider: str
    comparisons: list[OutputComparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    atol: float | None = None
    rtol: float | None = None
    localization: dict[str, Any] | None = None
    """Where parity broke (``convkit.diagnose.localize.Localization.to_dict()``), when localization ran."""

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    @property
    def worst(self) -> OutputComparison | None:
        """The comparison that needs the largest atol to pass (the one to look at first)."""
        if not self.comparisons:
            return None
        return max(self.comparisons, key=_severity)

    def to_dict(self) -> dict[str, Any]:
        from convkit import __version__

        return {
            "schema": REPORT_SCHEMA,
            "convkit_version": __version__,
            "passed": self.passed,
            "stage": None if self.passed else "parity",
            "model": self.model,
            "reference": self.reference,
            "provider": self.provider,
            "atol": self.atol,
            "rtol": self.rtol,
            "notes": list(self.notes),
            "outputs": [c.to_dict() for c in self.comparisons],
            "localization": self.localization,
        }


def _severity(c: OutputComparison) -> tuple[bool, float, float]:
    """Failures first, then the atol needed to pass, then the largest difference (undefined = worst)."""
    undefined = math.inf
    return (
        not c.passed,
        undefined if c.min_passing_atol is None else c.min_passing_atol,
        undefined if c.max_abs_diff is None else c.max_abs_diff,
    )


def _json_number(value: Any) -> Any:
    # NOTE: why: JSON has no NaN or Infinity; a report must load in every JSON parser, so non-finite
    # numbers are written as null (the comparison's ``reason`` says why).
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def compare_arrays(
    name: str,
    expected: Any,
    actual: Any,
    tolerance: Tolerance | None = None,
    data_set: str = "",
) -> OutputComparison:
    """Compare one output. Never raises: problems become ``passed=False`` with a ``reason``."""
    exp = np.asarray(expected)
    act = np.asarray(actual)
    atol, rtol = (tolerance or Tolerance()).for_dtype(exp.dtype)
    result = OutputComparison(
        name=name,
        data_set=data_set,
        passed=False,
        shape=list(act.shape),
        expected_shape=list(exp.shape),
        dtype=act.dtype.name,
        expected_dtype=exp.dtype.name,
        atol=atol,
        rtol=rtol,
    )
    if exp.shape != act.shape:
        result.reason = f"shape {tuple(act.shape)} differs from expected {tuple(exp.shape)}"
        return result
    if exp.dtype != act.dtype:
        result.reason = f"dtype {act.dtype.name} differs from expected {exp.dtype.name}"
        return result
    if exp.dtype.kind in "fc":
        _compare_inexact(result, exp, act, atol, rtol)
    else:
        _compare_exact(result, exp, act)
    return result


def _compare_exact(result: OutputComparison, exp: np.ndarray, act: np.ndarray) -> None:
    equal = exp == act
    mismatches = int(exp.size - np.count_nonzero(equal))
    result.mismatch_fraction = mismatches / exp.size if exp.size else 0.0
    if exp.dtype.kind in "biu" and exp.size:
        diff = np.abs(exp.astype(np.float64) - act.astype(np.float64))
        result.max_abs_diff = float(diff.max())
        nonzero = exp != 0
        rel = diff[nonzero] / np.abs(exp[nonzero].astype(np.float64))
        result.max_rel_diff = float(rel.max()) if rel.size else 0.0
    elif exp.size:
        result.max_abs_diff = 0.0 if mismatches == 0 else None
    result.min_passing_atol = 0.0 if mismatches == 0 else None
    result.passed = mismatches == 0
    if not result.passed:
        result.reason = f"{mismatches} of {exp.size} values differ (exact comparison for {exp.dtype.name})"


def _compare_inexact(
    result: OutputComparison, exp: np.ndarray, act: np.ndarray, atol: float, rtol: float
) -> None:
    e = exp.astype(np.complex128 if exp.dtype.kind == "c" else np.float64).ravel()
    a = act.astype(e.dtype).ravel()
    if e.size == 0:
        result.max_abs_diff = result.max_rel_diff = result.mismatch_fraction = 0.0
        result.min_passing_atol = 0.0
        result.passed = True
        return
    e_nan, a_nan = np.isnan(e), np.isnan(a)
    same_special = (e_nan & a_nan) | (np.isinf(e) & (e == a))
    finite = np.isfinite(e) & np.isfinite(a)
    one_sided = ~(same_special | finite)

    diff = np.zeros(e.shape, dtype=np.float64)
    diff[finite] = np.abs(a[finite] - e[finite])
    diff[one_sided] = np.inf
    magnitude = np.zeros(e.shape, dtype=np.float64)
    magnitude[finite] = np.abs(e[finite])

    bad = diff > atol + rtol * magnitude
    result.max_abs_diff = float(diff.max())
    nonzero = magnitude > 0
    result.max_rel_diff = float((diff[nonzero] / magnitude[nonzero]).max()) if nonzero.any() else 0.0
    if not nonzero.any() and result.max_abs_diff > 0:
        result.max_rel_diff = math.inf
    result.mismatch_fraction = float(np.count_nonzero(bad)) / e.size
    result.min_passing_atol = float(np.maximum(diff - rtol * magnitude, 0.0).max())
    result.cosine_similarity = _cosine(e[finite], a[finite])
    result.passed = not bad.any()
    if one_sided.any():
        result.reason = f"{int(one_sided.sum())} values are NaN or infinite on one side only"
    elif not result.passed:
        result.reason = (
            f"{int(bad.sum())} of {e.size} values ({result.mismatch_fraction:.2%}) exceed "
            f"atol={atol:g} + rtol={rtol:g}*|expected|; atol>={result.min_passing_atol:.3g} would pass"
        )


def _cosine(e: np.ndarray, a: np.ndarray) -> float | None:
    if e.size == 0:
        return None
    ne, na = float(np.linalg.norm(e)), float(np.linalg.norm(a))
    if ne == 0.0 or na == 0.0:
        return 1.0 if ne == na else 0.0
    return float(np.real(np.vdot(e, a)) / (ne * na))


def compare_outputs(
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    tolerance: Tolerance | None = None,
    data_set: str = "",
) -> list[OutputComparison]:
    """Compare every expected output with the same-named actual output (missing ones fail)."""
    results = []
    for name, exp in expected.items():
        if name not in actual:
            exp_arr = np.asarray(exp)
            atol, rtol = (tolerance or Tolerance()).for_dtype(exp_arr.dtype)
            results.append(
                OutputComparison(
                    name=name,
                    data_set=data_set,
                    passed=False,
                    shape=[],
                    expected_shape=list(exp_arr.shape),
                    dtype="",
                    expected_dtype=exp_arr.dtype.name,
                    atol=atol,
                    rtol=rtol,
                    reason=f"the model produced no output named {name!r} (it has: {', '.join(actual)})",
                )
            )
            continue
        results.append(compare_arrays(name, exp, actual[name], tolerance, data_set))
    return results
