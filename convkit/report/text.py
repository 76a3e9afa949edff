"""A ``ParityReport`` as text for people: the table of comparisons and a one-line verdict; and the table and
number helpers every text renderer shares.

The numbers printed are the numbers in the files: every renderer reads the same report object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from convkit.core.compare import OutputComparison, ParityReport


def format_number(value: float | None, digits: int = 3) -> str:
    """``value`` in ``digits`` significant digits, ``-`` for none and exponent notation from 10,000 up."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.2e}"


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart, as wide as their widest cell, with no trailing blanks."""
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def tolerance_text(comparison: OutputComparison) -> str:
    """The tolerance a comparison was held to, in the words of the rule that decided it
    (``OutputComparison.tolerance_rule``, the same string as in the JSON report)."""
    return comparison.tolerance_rule or f"atol {comparison.atol:g} + rtol {comparison.rtol:g} * |expected|"


def _atol_cell(c: OutputComparison) -> str:
    if c.atol_rule == "exact":
        return "exact"
    return f"{format_number(c.atol)} ({c.atol_rule})"


def _shape(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def render_text(report: ParityReport) -> str:
    """The human-readable table and a one-line verdict that says what failed and by how much."""
    runtimes = report.provider.replace(",", ", ")
    head = f"{report.model}  vs  {report.reference}   (onnxruntime on {runtimes})"
    with_runtime = any(c.runtime for c in report.comparisons)
    rows = [
        [
            *([c.runtime] if with_runtime else []),
            c.data_set,
            c.name,
            _shape(c.shape),
            format_number(c.max_abs_diff),
            format_number(c.max_rel_diff),
            "-" if c.mismatch_fraction is None else f"{c.mismatch_fraction:.2%}",
            "-" if c.cosine_similarity is None else f"{c.cosine_similarity:.6f}",
            _atol_cell(c),
            # NOTE: why only on failures: on a pass the atol that would pass is usually 0 (rtol covers it),
            # a number that says nothing; on a failure it is the one to look at (as Polygraphy prints it)
            "-" if c.passed else format_number(c.min_passing_atol),
            "PASS" if c.passed else "FAIL",
        ]
        for c in report.comparisons
    ]
    headers = [
        "data set",
        "output",
        "shape",
        "max abs",
        "max rel",
        "mismatch",
        "cosine",
        "atol (rule)",
        "min atol",
        "result",
    ]
    if with_runtime:
        headers.insert(0, "runtime")
    lines = [head, format_table(headers, rows)]
    lines += [f"note: {note}" for note in report.notes]
    lines += [f"warning: {w.message}" for w in report.warnings]
    lines.append(verdict(report))
    return "\n".join(lines)


def verdict(report: ParityReport) -> str:
    """One line: PASS with the worst margin, or FAIL naming the worst output and the atol that would pass."""
    if not report.comparisons:
        return "FAIL: nothing was compared"
    data_sets = len({c.data_set for c in report.comparisons})
    worst = report.worst
    assert worst is not None
    if report.passed:
        return (
            f"PASS: {len(report.comparisons)} output comparisons over {data_sets} data set(s); largest "
            f"difference {format_number(worst.max_abs_diff)}, held to {tolerance_text(worst)}"
            + (f" ({len(report.warnings)} degenerate output(s): see the warnings)" if report.warnings else "")
        )
    failed = [c for c in report.comparisons if not c.passed]
    where = f" on {worst.runtime}" if worst.runtime else ""
    return (
        f"FAIL: {len(failed)} of {len(report.comparisons)} output comparisons differ; worst: {worst.name!r} "
        f"in data set {worst.data_set!r}{where}: {worst.reason}"
    )
