"""The HTML report's plots, drawn with matplotlib and returned as PNG bytes, and the error summaries the
parity plots are drawn from.

An ``ErrorSummary`` is computed where the expected and actual arrays are at hand (``summarize_errors``) and
keeps only what the plots need: a histogram, a sample of elements and the worst ones. NOTE: why not the
arrays: a report over several data sets and runtimes of a large model would otherwise hold every output
twice until the page is drawn.

NOTE: why ``matplotlib.figure.Figure`` and never ``pyplot``: pyplot keeps global state and picks a GUI
backend from the environment; a bare ``Figure`` renders with Agg, holds no global state and is freed with
its last reference.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PASS_COLOR, FAIL_COLOR, TOLERANCE_COLOR, MUTED_COLOR = "#2b6cb0", "#c53030", "#2f855a", "#a0aec0"


@dataclass
class WorstElement:
    """One element of an output, where it sits and how far it is from passing."""

    index: tuple[int, ...]
    expected: Any
    actual: Any
    abs_diff: float
    allowed: float
    """``atol + rtol * |expected|``: the largest difference this element may have."""


@dataclass
class ErrorSummary:
    """The distribution of one comparison's element-wise errors ``|actual - expected|``."""

    atol: float
    rtol: float
    size: int
    exact: int
    """Elements with no difference at all (the histogram's log axis cannot show them)."""
    one_sided: int
    """Elements that are NaN or infinite on one side only (an infinite difference)."""
    failing: int
    max_expected: float
    edges: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    sample_magnitude: list[float] = field(default_factory=list)
    sample_error: list[float] = field(default_factory=list)
    worst: list[WorstElement] = field(default_factory=list)


def summarize_errors(
    expected: Any,
    actual: Any,
    atol: float,
    rtol: float,
    *,
    worst: int = 10,
    sample: int = 4000,
    bins: int = 40,
) -> ErrorSummary | None:
    """Summarize the element-wise errors of one output, as ``compare_arrays`` counts them.

    Args:
        atol, rtol: the tolerance the comparison applied (ignored for integer and bool outputs, which
            compare exactly).
        worst: how many of the elements furthest from passing to keep, with their indices.
        sample: how many elements the error-vs-magnitude plot draws at most (a fixed-seed sample).

    Returns:
        ``None`` when the arrays cannot be compared element by element (shapes differ, not numbers, empty).
    """
    exp, act = np.asarray(expected), np.asarray(actual)
    numeric = exp.dtype.kind in "biufc" and act.dtype.kind in "biufc"
    if exp.shape != act.shape or not numeric or exp.size == 0:
        return None
    if exp.dtype.kind not in "fc":
        atol, rtol = 0.0, 0.0
    kind = np.complex128 if "c" in (exp.dtype.kind, act.dtype.kind) else np.float64
    e, a = exp.astype(kind).ravel(), act.astype(kind).ravel()
    finite = np.isfinite(e) & np.isfinite(a)
    same_special = (np.isnan(e) & np.isnan(a)) | (np.isinf(e) & (e == a))
    diff = np.zeros(e.shape, dtype=np.float64)
    diff[finite] = np.abs(a[finite] - e[finite])
    diff[~(finite | same_special)] = np.inf
    magnitude = np.zeros(e.shape, dtype=np.float64)
    magnitude[finite] = np.abs(e[finite])
    allowed = atol + rtol * magnitude
    summary = ErrorSummary(
        atol=atol,
        rtol=rtol,
        size=int(e.size),
        exact=int(np.count_nonzero(diff == 0)),
        one_sided=int(np.count_nonzero(np.isinf(diff))),
        failing=int(np.count_nonzero(diff > allowed)),
        max_expected=float(magnitude.max()),
    )
    positive = diff[(diff > 0) & np.isfinite(diff)]
    if positive.size:
        tolerances = [t for t in (atol, atol + rtol * summary.max_expected) if t > 0]
        low, high = min(positive.min(), *tolerances), max(positive.max(), *tolerances)
        edges = np.geomspace(low, high * 1.000001 if high > low else low * 10, bins + 1)
        summary.edges = [float(x) for x in edges]
        summary.counts = [int(x) for x in np.histogram(positive, edges)[0]]
    drawable = np.flatnonzero(np.isfinite(diff))
    if drawable.size > sample:
        drawable = np.sort(np.random.default_rng(0).choice(drawable, sample, replace=False))
    # NOTE: why by the excess over the tolerance: that is what decides pass or fail (and what
    # min_passing_atol measures); an element with a large absolute error may be well within its rtol
    excess = diff - allowed
    count = min(worst, e.size)
    top = np.argpartition(-excess, count - 1)[:count]
    top = top[np.argsort(-excess[top], kind="stable")]
    chosen = np.union1d(drawable, top[np.isfinite(diff[top])])
    summary.sample_magnitude = magnitude[chosen].tolist()
    summary.sample_error = diff[chosen].tolist()
    summary.worst = [
        WorstElement(
            index=tuple(int(i) for i in np.unravel_index(int(flat), exp.shape)),
            expected=exp.ravel()[flat].item(),
            actual=act.ravel()[flat].item(),
            abs_diff=float(diff[flat]),
            allowed=float(allowed[flat]),
        )
        for flat in top
    ]
    return summary


def to_png(figure: Figure) -> bytes:
    """The figure as PNG bytes (Agg, 100 dpi)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float, height: float, columns: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, list(np.atleast_1d(figure.subplots(1, columns)))


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#4a5568")
    ax.set_xticks([])
    ax.set_yticks([])


def error_figure(summary: ErrorSummary, title: str) -> bytes:
    """Two panels: the histogram of ``|error|`` against the tolerance, and ``|error|`` against
    ``|expected|`` with the tolerance line ``atol + rtol * |expected|`` (elements above it fail)."""
    from matplotlib.ticker import MaxNLocator

    figure, (hist, scatter) = _figure(11, 3.6, 2)
    figure.suptitle(title, fontsize=10)
    if summary.counts:
        hist.stairs(summary.counts, summary.edges, fill=True, color=PASS_COLOR, alpha=0.8)
        hist.set_xscale("log")
        high = summary.atol + summary.rtol * summary.max_expected
        hist.axvline(summary.atol, color=TOLERANCE_COLOR, lw=2, label=f"atol = {summary.atol:.3g}")
        if high > summary.atol:
            hist.axvspan(
                max(summary.atol, summary.edges[0]),
                high,
                color=TOLERANCE_COLOR,
                alpha=0.15,
                label="atol + rtol·|expected| (its range)",
            )
        hist.set_xlabel("|actual − expected|")
        hist.set_ylabel("elements")
        hist.yaxis.set_major_locator(MaxNLocator(integer=True))
        hist.legend(fontsize=8, loc="best", framealpha=0.9)
    else:
        _no_data(hist, f"all {summary.size:,} elements equal exactly")
    notes = [f"{summary.failing:,} of {summary.size:,} out of tolerance"]
    if summary.exact and summary.counts:
        notes.append(f"{summary.exact:,} exactly equal (not on the log axis)")
    if summary.one_sided:
        notes.append(f"{summary.one_sided:,} NaN/inf on one side only")
    hist.set_title("; ".join(notes), fontsize=9)
    _magnitude_panel(scatter, summary)
    return to_png(figure)


def _magnitude_panel(ax: Axes, summary: ErrorSummary) -> None:
    magnitude, error = np.asarray(summary.sample_magnitude), np.asarray(summary.sample_error)
    shown = error > 0
    if not shown.any():
        _no_data(ax, "no element differs")
        return
    allowed = summary.atol + summary.rtol * magnitude
    failing = error > allowed
    ax.scatter(magnitude[shown & ~failing], error[shown & ~failing], s=6, color=PASS_COLOR, label="within")
    ax.scatter(magnitude[shown & failing], error[shown & failing], s=8, color=FAIL_COLOR, label="outside")
    line = np.linspace(0.0, max(float(magnitude.max()), 1e-12), 200)
    bound = summary.atol + summary.rtol * line
    if (bound > 0).any():
        ax.plot(line, bound, color=TOLERANCE_COLOR, lw=2, label="atol + rtol·|expected|")
    ax.set_yscale("log")
    ax.set_xlabel("|expected|")
    ax.set_ylabel("|actual − expected|")
    drawn = len(summary.sample_error)
    ax.set_title(f"error vs magnitude ({drawn:,} of {summary.size:,} elements drawn)", fontsize=9)
    ax.legend(fontsize=8, loc="best")


@dataclass
class NodeError:
    """One value localization compared, in graph order."""

    position: int
    """The index of the node that produces the value, in the graph's (topological) order."""
    value: str
    node: str
    op_type: str
    max_abs_diff: float | None
    passed: bool
    source: str | None = None
    """The framework module or layer (and file:line) the exporter recorded for the node."""


def localization_figure(points: Sequence[NodeError], first: str | None, label: str) -> bytes:
    """The largest difference of every compared value along the graph, the first divergence highlighted."""
    from matplotlib.ticker import MaxNLocator

    figure, (ax,) = _figure(11, 3.8)
    if not points:
        _no_data(ax, "no value was compared")
        return to_png(figure)
    x = np.array([p.position for p in points], dtype=float)
    finite = [p.max_abs_diff for p in points if p.max_abs_diff is not None and math.isfinite(p.max_abs_diff)]
    floor = min((d for d in finite if d > 0), default=1e-6) / 1e3
    # NOTE: why drawn above the largest finite difference: an undefined (shape) or infinite difference
    # is worse than any number, and the log axis cannot hold it
    beyond = max(max(finite, default=floor), floor) * 10
    y = np.array(
        [beyond if p.max_abs_diff is None else max(p.max_abs_diff, floor) for p in points], dtype=float
    )
    y[~np.isfinite(y)] = beyond
    passed = np.array([p.passed for p in points])
    ax.plot(x, y, color=MUTED_COLOR, lw=1, zorder=1)
    ax.scatter(x[passed], y[passed], s=14, color=PASS_COLOR, label="agrees", zorder=2)
    ax.scatter(x[~passed], y[~passed], s=14, color="#dd6b20", label="differs", zorder=2)
    hit = next((p for p in points if p.value == first), None)
    if hit is not None:
        hy = y[points.index(hit)]
        ax.axvline(hit.position, color=FAIL_COLOR, lw=1, ls="--", zorder=0)
        ax.scatter([hit.position], [hy], s=140, facecolors="none", edgecolors=FAIL_COLOR, lw=2, zorder=3)
        # NOTE: why the side follows the point: a label running past the axes widens the whole figure
        right_half = hit.position > (x.min() + x.max()) / 2
        ax.annotate(
            f"first divergence: {hit.node} ({hit.op_type})" + (f"\n{hit.source}" if hit.source else ""),
            (hit.position, hy),
            xytext=(-14 if right_half else 14, -30),
            textcoords="offset points",
            ha="right" if right_half else "left",
            color=FAIL_COLOR,
            fontsize=9,
            fontweight="bold",
        )
    ax.set_yscale("log")
    ax.margins(x=0.04, y=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("node, in graph (topological) order")
    ax.set_ylabel("max |actual − oracle|")
    ax.set_title(f"error by node against the {label} (exact matches drawn at {floor:.1g})", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    return to_png(figure)


def heatmap_figure(
    names: Sequence[str], values: Sequence[Sequence[float]], failing: Iterable[tuple[str, str]] = ()
) -> bytes:
    """The framework x framework matrix of max abs differences on a log colour scale; exact agreement
    (the diagonal) in grey, failing pairs outlined in red."""
    import matplotlib as mpl
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    grid = np.array(values, dtype=float)
    size = max(len(names), 1)
    figure, (ax,) = _figure(2.4 + 1.1 * size, 1.6 + 0.9 * size)
    positive = grid[np.isfinite(grid) & (grid > 0)]
    low = float(positive.min()) / 10 if positive.size else 1e-9
    high = float(positive.max()) * 10 if positive.size else 1e-6
    norm = LogNorm(vmin=low, vmax=high)
    cmap = mpl.colormaps["viridis"].with_extremes(bad="#e2e8f0")
    shown = np.ma.masked_equal(np.where(np.isfinite(grid), grid, high), 0.0)
    image = ax.imshow(shown, cmap=cmap, norm=norm)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    for (row, column), value in np.ndenumerate(grid):
        text = "inf" if not math.isfinite(value) else "0" if value == 0 else f"{value:.1e}"
        light = value == 0 or norm(min(value, high)) > 0.6
        ax.text(column, row, text, ha="center", va="center", color="black" if light else "white", fontsize=8)
    where = {name: k for k, name in enumerate(names)}
    for a, b in failing:
        for row, column in ((where.get(a), where.get(b)), (where.get(b), where.get(a))):
            if row is not None and column is not None:
                box = Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, ec=FAIL_COLOR, lw=3)
                ax.add_patch(box)
    figure.colorbar(image, ax=ax, label="max |a − b|")
    ax.set_title("max abs difference between frameworks' ONNX outputs", fontsize=9)
    return to_png(figure)


def latency_figure(batch: int, samples: Mapping[str, Sequence[float]], spread: bool) -> bytes:
    """Latency per contender at one batch size: the distribution of per-call times (box plots) when
    ``spread`` is false, else ``samples`` holds ``(p10, median, p90)`` and the range is drawn."""
    names = list(samples)
    figure, (ax,) = _figure(9, 0.9 + 0.55 * max(len(names), 1))
    if spread:
        for row, name in enumerate(names):
            p10, median, p90 = samples[name]
            ax.hlines(row, p10, p90, color=PASS_COLOR, lw=6, alpha=0.5)
            ax.plot([median], [row], "|", color=FAIL_COLOR, ms=16, mew=2)
        ax.set_yticks(range(len(names)), names)
        ax.set_title(f"batch {batch}: p10–p90 (bar) and median (tick), ms", fontsize=9)
    else:
        ax.boxplot([list(samples[n]) for n in names], vert=False, tick_labels=names, showfliers=True)
        ax.set_title(f"batch {batch}: per-call latency, ms", fontsize=9)
    ax.set_xlabel("ms per call")
    ax.invert_yaxis()
    return to_png(figure)


def bars_figure(title: str, unit: str, values: Mapping[str, float]) -> bytes:
    """A small horizontal bar chart (fp32 against the quantized model)."""
    figure, (ax,) = _figure(7, 0.8 + 0.5 * max(len(values), 1))
    names = list(values)
    ax.barh(names, [values[n] for n in names], color=[PASS_COLOR, "#dd6b20"][: len(names)])
    for row, name in enumerate(names):
        ax.text(values[name], row, f" {values[name]:,.3g} {unit}", va="center", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.invert_yaxis()
    ax.margins(x=0.25)
    return to_png(figure)
