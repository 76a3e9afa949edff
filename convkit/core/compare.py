"""Compare reference outputs with runtime outputs, producing data (a ``ParityReport``), never raising.

An element passes when ``|actual - expected| <= atol + rtol * |expected|`` (numpy.isclose). Unless the user
gives ``atol``, it scales with the output: ``atol = max(default atol, scale factor * max|expected|)``. NaN in
the same place on both sides counts as equal, as do equal infinities. Integer, bool and string outputs compare
exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
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


# NOTE: why a scale term: kernels that sum in another order differ by a few ulps *of the values summed*, and
# those are as large as the output's largest values, not as large as each element. A ResNet-50's logits reach
# 1e3, so its correct float32 export differs by ~1e-3 on elements near zero, where ``rtol * |expected|`` gives
# nothing; a fixed atol of 1e-5 fails it. A tenth of the dtype's rtol, times the largest magnitude, is ~80
# float32 ulps of that magnitude: above summation noise, far below what a wrong weight or op changes.
SCALE_FACTORS: dict[str, float] = {"float64": 1e-7, "float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-3}

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
        """The ``(atol, rtol)`` before any scaling: the user's values, else the dtype's defaults."""
        atol, rtol = default_tolerance(dtype)
        return (atol if self.atol is None else self.atol, rtol if self.rtol is None else self.rtol)

    def scale_factor(self, dtype: np.dtype[Any]) -> float | None:
        """The factor of ``max|expected|`` the atol grows to, ``None`` when it must not grow.

        NOTE: why only for the default: a user who gives ``--atol`` means that number; scaling it silently
        would make the flag lie.
        """
        if self.atol is not None:
            return None
        return SCALE_FACTORS.get(np.dtype(dtype).name, SCALE_FACTORS["float32"])


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
    atol_rule: str = "default"
    """Where ``atol`` came from: ``given`` (the user's), ``default`` (the dtype's), ``scale`` (the scale
    factor times ``expected_scale``, larger than the default) or ``exact`` (not a float output)."""
    expected_scale: float | None = None
    """The largest finite ``|expected|`` of a float output (what the ``scale`` rule multiplies)."""
    tolerance_rule: str = ""
    """The rule that decided, in words (``atol 1e-05 + rtol 0.0001 * |expected|``); reports print this."""

    def to_dict(self) -> dict[str, Any]:
        return {key: _json_number(value) for key, value in self.__dict__.items()}


@dataclass
class ParityWarning:
    """Why a passing comparison proves less than it seems: an output that cannot tell a right model from a
    wrong one (``kind``: ``constant``, ``all-nan``, ``all-zero``)."""

    output: str
    kind: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"output": self.output, "kind": self.kind, "message": self.message}


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
    warnings: list[ParityWarning] = field(default_factory=list)
    """Outputs whose comparison cannot fail (``convkit.core.degenerate``); they do not change ``passed``."""
    localized_values: list[OutputComparison] = field(default_factory=list)
    """The intermediate values localization compared, in order (the HTML report; not in ``to_dict``)."""

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
            "warnings": [w.to_dict() for w in self.warnings],
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
    tol = tolerance or Tolerance()
    atol, rtol = tol.for_dtype(exp.dtype)
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
        atol_rule="default" if tol.atol is None else "given",
    )
    result.tolerance_rule = _rule_text(result, None)
    if exp.shape != act.shape:
        result.reason = f"shape {tuple(act.shape)} differs from expected {tuple(exp.shape)}"
        return result
    if exp.dtype != act.dtype:
        result.reason = f"dtype {act.dtype.name} differs from expected {exp.dtype.name}"
        return result
    if exp.dtype.kind in "fc":
        _scale_atol(result, exp, tol.scale_factor(exp.dtype))
        _compare_inexact(result, exp, act, result.atol, rtol)
    else:
        result.atol_rule, result.tolerance_rule = "exact", f"exact ({exp.dtype.name})"
        _compare_exact(result, exp, act)
    return result


def _scale_atol(result: OutputComparison, exp: np.ndarray, factor: float | None) -> None:
    """Record ``max|expected|`` and raise ``result.atol`` to ``factor`` times it where that is larger."""
    finite = np.abs(exp[np.isfinite(exp)]) if exp.size else np.zeros(0)
    result.expected_scale = float(finite.max()) if finite.size else 0.0
    if factor is not None and factor * result.expected_scale > result.atol:
        result.atol, result.atol_rule = factor * result.expected_scale, "scale"
    result.tolerance_rule = _rule_text(result, factor)


def _rule_text(c: OutputComparison, factor: float | None) -> str:
    """The tolerance in words, the same in every report: ``atol 0.0116 (scale: 1e-05 * max|expected|
    1.16e+03) + rtol 0.0001 * |expected|``; ``(default)`` or ``(given)`` for the other rules."""
    why = c.atol_rule
    if c.atol_rule == "scale":
        why = f"scale: {factor:g} * max|expected| {c.expected_scale:.3g}"
    return f"atol {c.atol:.3g} ({why}) + rtol {c.rtol:g} * |expected|"


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
            f"{result.tolerance_rule}; atol>={result.min_passing_atol:.3g} would pass"
        )


def _cosine(e: np.ndarray, a: np.ndarray) -> float | None:
    if e.size == 0:
        return None
    ne, na = float(np.linalg.norm(e)), float(np.linalg.norm(a))
    if ne == 0.0 or na == 0.0:
        return 1.0 if ne == na else 0.0
    return float(np.real(np.vdot(e, a)) / (ne * na))


OutputObserver = Callable[[OutputComparison, np.ndarray, np.ndarray], None]
_observer: ContextVar[OutputObserver | None] = ContextVar("convkit_output_observer", default=None)


@contextlib.contextmanager
def observing_outputs(observer: OutputObserver) -> Iterator[None]:
    """While the block runs, ``compare_outputs`` hands ``observer`` each comparison with its arrays
    (``comparison, expected, actual``): how the HTML report sees every element's error without the report
    keeping arrays."""
    token = _observer.set(observer)
    try:
        yield
    finally:
        _observer.reset(token)


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
            tol = tolerance or Tolerance()
            atol, rtol = tol.for_dtype(exp_arr.dtype)
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
                    atol_rule="default" if tol.atol is None else "given",
                    reason=f"the model produced no output named {name!r} (it has: {', '.join(actual)})",
                )
            )
            results[-1].tolerance_rule = _rule_text(results[-1], None)
            continue
        results.append(compare_arrays(name, exp, actual[name], tolerance, data_set))
        observer = _observer.get()
        if observer is not None:
            observer(results[-1], np.asarray(exp), np.asarray(actual[name]))
    return results
