"""``convkit matrix``: the reference CNN in every available framework, one set of weights, one inference path.

For each framework: build the reference CNN with the canonical weights, export it, verify it against the
framework itself; then compare every framework's ONNX outputs with every other's on the same inputs (layouts
converted). Agreement across the matrix shows the frameworks, their exporters and the layout conversions all
compute the same function.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.compare import Tolerance, compare_arrays
from convkit.core.inputs import InputSpec
from convkit.core.runtime import SessionOptions
from convkit.errors import ConvkitError
from convkit.frontends import FRONTENDS, PLANNED, HasReferenceCNN, get_frontend
from convkit.reference.cnn import CANONICAL_WEIGHTS, load_digits, load_weights


@dataclass
class FrameworkResult:
    """One framework's row: did its ONNX export match the framework itself?"""

    framework: str
    status: str
    max_abs_diff: float | None = None
    reason: str | None = None
    install: str | None = None
    model: str | None = None
    exporter: str | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class MatrixReport:
    weights: str
    samples: int
    frameworks: list[FrameworkResult]
    pairwise: dict[str, dict[str, float]] = field(default_factory=dict)
    pairwise_failures: list[str] = field(default_factory=list)

    @property
    def pairwise_passed(self) -> bool:
        return not self.pairwise_failures

    @property
    def passed(self) -> bool:
        ran = [r for r in self.frameworks if r.status != "unavailable"]
        return bool(ran) and all(r.status == "pass" for r in ran) and self.pairwise_passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "weights": self.weights,
            "samples": self.samples,
            "frameworks": [r.to_dict() for r in self.frameworks],
            "pairwise_max_abs_diff": self.pairwise,
            "pairwise_failures": self.pairwise_failures,
        }


def _to_layout(x_nchw: np.ndarray, layout: str) -> np.ndarray:
    return x_nchw if layout == "NCHW" else np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))


def _spec(layout: str) -> InputSpec:
    dims: list[int | str] = ["batch", 1, 28, 28] if layout == "NCHW" else ["batch", 28, 28, 1]
    return InputSpec("x", dims, "float32")


def _one(
    name: str,
    weights: dict[str, np.ndarray],
    x_nchw: np.ndarray,
    out_dir: Path,
    tolerance: Tolerance | None,
    options: SessionOptions | None,
) -> tuple[FrameworkResult, np.ndarray | None]:
    from convkit.api import export_native, verify_native
    from convkit.core.runtime import RuntimeSession
    from convkit.graph.model import load_onnx

    try:
        frontend = get_frontend(name)
    except ConvkitError as exc:
        return FrameworkResult(name, "unavailable", reason=exc.message, install=exc.hint), None
    if not isinstance(frontend, HasReferenceCNN):
        return FrameworkResult(name, "unavailable", reason="its front end has no reference CNN yet"), None
    layout = frontend.reference_layout
    result = FrameworkResult(name, "error", versions=frontend.versions())
    try:
        native = frontend.reference_cnn(weights)
        x = _to_layout(x_nchw, layout)
        target = out_dir / name / "model.onnx"
        summary = export_native(
            frontend,
            native,
            specs=[_spec(layout)],
            example={"x": x[:2]},
            output=target,
            source=f"reference_cnn:{name}",
        )
        result.model, result.exporter = str(target), summary.export.exporter
        model = load_onnx(target)
        report = verify_native(
            model,
            frontend,
            native,
            data_sets=[("digits", {"x": x}), ("batch=1", {"x": x[:1]})],
            tolerance=tolerance,
            options=options,
        )
        worst = report.worst
        result.max_abs_diff = None if worst is None else worst.max_abs_diff
        result.status = "pass" if report.passed else "fail"
        if not report.passed and worst is not None:
            result.reason = worst.reason
        outputs = RuntimeSession(model, options).run({"x": x})
        return result, next(iter(outputs.values()))
    except ConvkitError as exc:
        result.reason = str(exc)
    except Exception as exc:  # a framework failing is a row in the table, not the end of the matrix
        result.reason = f"{type(exc).__name__}: {exc}"
        result.install = None
        if os.environ.get("CONVKIT_DEBUG"):
            traceback.print_exc()
    return result, None


def run_matrix(
    frameworks: Sequence[str] | None = None,
    weights_path: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] = "convkit-matrix",
    tolerance: Tolerance | None = None,
    options: SessionOptions | None = None,
    samples: int = 64,
    progress: Callable[[str], None] | None = None,
) -> MatrixReport:
    """Run the reference CNN through every framework in ``frameworks`` (all known ones by default)."""
    from convkit.frontends import canonical_name

    names = [canonical_name(f) for f in frameworks] if frameworks else list(FRONTENDS)
    weights = load_weights(weights_path or CANONICAL_WEIGHTS)
    x = load_digits()[2][:samples]
    report = MatrixReport(str(weights_path or CANONICAL_WEIGHTS), len(x), [])
    outputs: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(names):
        if progress:
            progress(name)
        result, probs = _one(name, weights, x, Path(out_dir), tolerance, options)
        report.frameworks.append(result)
        if probs is not None:
            outputs[name] = probs
    if not frameworks:
        report.frameworks += [
            FrameworkResult(name, "unavailable", reason=why) for name, why in PLANNED.items()
        ]
    for a in outputs:
        report.pairwise[a] = {}
        for b in outputs:
            comparison = compare_arrays("probs", outputs[a], outputs[b], tolerance)
            diff = comparison.max_abs_diff
            report.pairwise[a][b] = float("inf") if diff is None else diff
            if not comparison.passed and f"{b}/{a}" not in report.pairwise_failures:
                report.pairwise_failures.append(f"{a}/{b}")
    return report
