"""The HTML report (``--html REPORT.html``): one self-contained page per verify, matrix, bench or quantize
run, its plots drawn by ``convkit.report.plots``.

NOTE: why self-contained (styles inline, plots as base64 PNG, no script or font from elsewhere): the page is
a CI artifact opened offline, mailed, attached to a bug; its Content-Security-Policy forbids every network
load, so a page that needed one would show it as a console error rather than quietly fetch it.
NOTE: why PNG and not SVG: an error-vs-magnitude scatter of thousands of points is megabytes of SVG and a
few dozen kilobytes of PNG.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from convkit.errors import ConvkitError
from convkit.report.text import format_number, verdict

if TYPE_CHECKING:
    from convkit.core.compare import OutputComparison, ParityReport
    from convkit.perf.bench import BenchReport
    from convkit.quantize import QuantizeReport
    from convkit.reference.matrix import MatrixReport
    from convkit.report.plots import ErrorSummary, NodeError

INSTALL_HINT = "pip install 'convkit[html]'"
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #1a202c; }
h1 { font-size: 20px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 32px; }
h3 { font-size: 15px; margin: 22px 0 6px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #e2e8f0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f7fafc; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { padding: 8px 12px; border-radius: 4px; font-weight: 600; }
.pass { background: #f0fff4; color: #22543d; } .fail { background: #fff5f5; color: #742a2a; }
.badge { font-size: 12px; padding: 1px 6px; border-radius: 3px; }
tr.hit td { background: #fff5f5; font-weight: 600; }
figure { margin: 8px 0; } img.plot { max-width: 100%; } code { font-size: 12px; }
"""
# NOTE: why a marker on <body>: a test (or a person with devtools) reads how many plots decoded without
# a screenshot's pixels; the page stays fully readable with scripts off.
_SCRIPT = """
window.addEventListener("load", () => {
  const plots = Array.from(document.querySelectorAll("img.plot"));
  const shown = plots.filter((img) => img.complete && img.naturalWidth > 0);
  document.body.dataset.plotsExpected = String(plots.length);
  document.body.dataset.plotsLoaded = String(shown.length);
});
"""


def require_matplotlib() -> None:
    """Fail before any long work when ``--html`` cannot draw its plots.

    Raises:
        ConvkitError: matplotlib is not installed (exit 2), naming the extra that installs it.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConvkitError("--html needs matplotlib, which is not installed", INSTALL_HINT) from None


def write_html(path: str | os.PathLike[str], page: str) -> None:
    """Write ``page`` to ``path`` atomically (a temporary file beside it, then one rename)."""
    from convkit.core.artifacts import write_text_atomic

    write_text_atomic(path, page)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{'-' if value is None else _e(value)}</td>"
    if isinstance(value, int | float):
        text = format_number(value) if math.isfinite(value) else str(value)
        return f'<td class="num">{_e(text if isinstance(value, float) else f"{value:,}")}</td>'
    if isinstance(value, list | tuple):
        return f"<td>{_e(', '.join(str(v) for v in value))}</td>"
    if isinstance(value, dict):
        return f"<td>{_e(', '.join(f'{k} {v}' for k, v in value.items()))}</td>"
    return f"<td>{_e(value)}</td>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], hit: int | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        f"<tr{' class=hit' if k == hit else ''}>{''.join(_cell(v) for v in row)}</tr>"
        for k, row in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fields(mapping: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    """Every field of ``mapping`` but ``skip`` as a two-column table.

    NOTE: why generic: the reports grow fields (tolerance rules, warnings); a page that lists whatever
    the report holds shows them without a change here.
    """
    left_out = set(skip)
    return _table(["field", "value"], [[k, v] for k, v in mapping.items() if k not in left_out])


def _list(title: str, items: Sequence[Any]) -> str:
    if not items:
        return ""
    if all(isinstance(item, dict) for item in items):
        headers = list(dict.fromkeys(key for item in items for key in item))
        return f"<h3>{_e(title)}</h3>" + _table(headers, [[item.get(h) for h in headers] for item in items])
    return f"<h3>{_e(title)}</h3><ul>" + "".join(f"<li>{_e(item)}</li>" for item in items) + "</ul>"


def _plot(png: bytes, plot_id: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img class="plot" id="{_e(plot_id)}" alt="{_e(alt)}" '
        f'src="data:image/png;base64,{data}"></figure>'
    )


def _badge(passed: bool) -> str:
    return f'<span class="badge {"pass" if passed else "fail"}">{"PASS" if passed else "FAIL"}</span>'


def _page(title: str, passed: bool, summary: str, sections: Sequence[str]) -> str:
    from convkit import __version__

    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="verdict {"pass" if passed else "fail"}">{_e(summary)}</p>'
        + "".join(sections)
        + f"<p><small>convkit {_e(__version__)}</small></p><script>{_SCRIPT}</script></body></html>\n"
    )


def _lists_of(mapping: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    left_out = set(skip)
    return "".join(
        _list(key, value) for key, value in mapping.items() if isinstance(value, list) and key not in left_out
    )


def render_parity_html(
    report: ParityReport,
    errors: Sequence[ErrorSummary | None] = (),
    nodes: Sequence[NodeError] = (),
) -> str:
    """The page of a verification: the report's fields, then per output and data set the error histogram
    against the tolerance, error vs magnitude and the worst elements; with localization, the error by
    node along the graph, the first divergence and its source.

    Args:
        errors: one summary per ``report.comparisons`` entry, in order (``None`` where the arrays could
            not be compared element by element); missing ones draw no plot.
        nodes: the values localization compared, in graph order.
    """
    from convkit.report.plots import error_figure

    document = report.to_dict()
    scalars = {k: v for k, v in document.items() if not isinstance(v, list | dict)}
    sections = ["<h2>Run</h2>", _fields(scalars), _lists_of(document, skip=("outputs",))]
    sections.append("<h2>Outputs</h2>")
    headers = ["output", "data set", "runtime", "max abs", "min passing atol", "mismatch", "result"]
    rows = [
        [c.name, c.data_set, c.runtime or "-", c.max_abs_diff, c.min_passing_atol, c.mismatch_fraction]
        for c in report.comparisons
    ]
    for row, c in zip(rows, report.comparisons, strict=True):
        row.append("PASS" if c.passed else "FAIL")
    sections.append(_table(headers, rows))
    for k, comparison in enumerate(report.comparisons):
        label = _comparison_label(comparison)
        sections.append(f"<h3>{_e(label)} {_badge(comparison.passed)}</h3>")
        sections.append(_fields(comparison.to_dict(), skip=("name", "data_set", "runtime", "passed")))
        summary = errors[k] if k < len(errors) else None
        if summary is None:
            continue
        alt = f"error distribution of {label}: histogram of |error| and error vs magnitude with tolerance"
        sections.append(_plot(error_figure(summary, label), f"plot-output-{k}", alt))
        sections.append(_worst_table(summary))
    if report.localization is not None:
        sections.append(_localization(report.localization, nodes))
    return _page(f"convkit verify: {report.model}", report.passed, verdict(report), sections)


def _comparison_label(c: OutputComparison) -> str:
    return " / ".join(part for part in (c.runtime, c.data_set, c.name) if part)


def _worst_table(summary: ErrorSummary) -> str:
    rows = [
        [
            "[" + ", ".join(str(i) for i in w.index) + "]",
            w.expected,
            w.actual,
            w.abs_diff,
            w.allowed,
            "within" if w.abs_diff <= w.allowed else "outside",
        ]
        for w in summary.worst
    ]
    headers = ["index", "expected", "actual", "|error|", "allowed (atol + rtol·|expected|)", "tolerance"]
    caption = f"<p>The {len(rows)} elements furthest from passing (largest |error| − allowed):</p>"
    return caption + _table(headers, rows)


def _localization(found: Mapping[str, Any], nodes: Sequence[NodeError]) -> str:
    from convkit.report.plots import localization_figure

    first = found.get("first_divergence") or {}
    output = first.get("output")
    parts = ["<h2>Localization</h2>", _fields({k: v for k, v in found.items() if k != "first_divergence"})]
    if first:
        recorded = next((n.source for n in nodes if n.value == output and n.source), None)
        layer = first.get("source")
        # NOTE: why both: the framework names the layer, the exporter's record adds the file and line
        sources = [layer] if layer and not (recorded or "").startswith(layer) else []
        where = " — ".join([*sources, *([recorded] if recorded else [])]) or "not recorded by the exporter"
        parts.append(
            f"<h3 id=first-divergence>First divergence: {_e(first.get('node'))} ({_e(first.get('op_type'))})"
            f"</h3><p>Source: <code>{_e(where)}</code></p>"
        )
        parts.append(_fields(first))
    else:
        parts.append("<p>No compared value diverges.</p>")
    oracle = str(found.get("oracle", "oracle"))
    alt = "error by node along the graph, the first diverging node highlighted"
    parts.append(_plot(localization_figure(nodes, output, oracle), "plot-localization", alt))
    if nodes:
        at = next((k for k, n in enumerate(nodes) if n.value == output), len(nodes) - 1)
        shown = nodes[max(0, at - 8) : at + 1]
        rows = [[n.position, n.node, n.op_type, n.value, n.source, n.max_abs_diff, n.passed] for n in shown]
        hit = len(shown) - 1 if output is not None else None
        parts.append("<p>The values compared last, up to the first divergence:</p>")
        headers = ["#", "node", "op", "value", "source", "max abs diff", "agrees"]
        parts.append(_table(headers, rows, hit=hit))
    return "".join(parts)


def render_matrix_html(report: MatrixReport) -> str:
    """The page of ``convkit matrix``: each framework's row and the framework x framework heatmap of the
    max abs difference between their ONNX outputs."""
    from convkit.report.plots import heatmap_figure

    document = report.to_dict()
    rows = document["frameworks"]
    headers = list(rows[0]) if rows else ["framework", "status"]
    sections = [
        "<h2>Run</h2>",
        _fields({k: v for k, v in document.items() if not isinstance(v, list | dict)}),
        _list("pairwise failures", document["pairwise_failures"]),
        "<h2>Frameworks</h2>",
        _table(headers, [[row.get(h) for h in headers] for row in rows]),
        "<h2>Agreement between frameworks</h2>",
    ]
    names = list(report.pairwise)
    if names:
        grid = [[report.pairwise[a].get(b, math.inf) for b in names] for a in names]
        alt = "heatmap: max abs difference between every pair of frameworks"
        failing = [tuple(pair.split("/", 1)) for pair in report.pairwise_failures if "/" in pair]
        png = heatmap_figure(names, grid, [(a, b) for a, b in failing])
        sections.append(_plot(png, "plot-matrix", alt))
    else:
        sections.append("<p>No framework produced outputs to compare.</p>")
    ran = sum(r.status != "unavailable" for r in report.frameworks)
    summary = f"{'PASS' if report.passed else 'FAIL'}: {ran} framework(s) ran, {len(names)} compared"
    return _page("convkit matrix", report.passed, summary, sections)


def render_bench_html(
    report: BenchReport, samples: Mapping[tuple[str, int], Sequence[float]] | None = None
) -> str:
    """The page of ``convkit bench``: the timings and, per batch size, the latency of every contender.

    Args:
        samples: per-call seconds keyed by ``(contender, batch)`` (what ``perf.bench.interleave`` measures):
            drawn as distributions. Without them, each contender's p10–p90 range and median are drawn.
    """
    from convkit.report.plots import latency_figure

    document = report.to_dict()
    timings = document["timings"]
    headers = list(timings[0]) if timings else ["contender"]
    sections = [
        "<h2>Run</h2>",
        _fields({k: v for k, v in document.items() if not isinstance(v, list)}),
        _list("notes", document["notes"]),
        "<h2>Timings</h2>",
        _table(headers, [[row.get(h) for h in headers] for row in timings]),
        "<h2>Latency</h2>",
    ]
    for batch in dict.fromkeys(t.batch for t in report.timings):
        rows = [t for t in report.timings if t.batch == batch]
        if samples is not None and all((t.contender, batch) in samples for t in rows):
            drawn = {t.contender: [s * 1e3 for s in samples[(t.contender, batch)]] for t in rows}
            png = latency_figure(batch, drawn, spread=False)
        else:
            png = latency_figure(batch, {t.contender: (t.p10_ms, t.median_ms, t.p90_ms) for t in rows}, True)
        sections.append(_plot(png, f"plot-latency-{batch}", f"latency per contender at batch {batch}"))
    return _page(f"convkit bench: {report.model}", True, f"{len(report.timings)} timings", sections)


def render_quantize_html(report: QuantizeReport, errors: Sequence[tuple[str, ErrorSummary]] = ()) -> str:
    """The page of ``convkit quantize``: the check against fp32, size and speed side by side and, when
    given, the error distribution of each output (``summarize_errors`` of the fp32 and quantized outputs).
    """
    from convkit.report.plots import bars_figure, error_figure

    document = report.to_dict()
    scalars = {k: v for k, v in document.items() if not isinstance(v, list | dict)}
    sections = ["<h2>Check against fp32</h2>", _fields(scalars), _lists_of(document)]
    sizes = {"fp32": float(report.fp32_bytes), report.mode: float(report.quantized_bytes)}
    sections.append(
        _plot(bars_figure("model size", "bytes", sizes), "plot-size", "model size, fp32 vs quantized")
    )
    if report.fp32_ms is not None and report.quantized_ms is not None:
        times = {"fp32": report.fp32_ms, report.mode: report.quantized_ms}
        alt = "median latency per batch, fp32 vs quantized"
        sections.append(_plot(bars_figure("median latency per batch", "ms", times), "plot-speed", alt))
    for k, (name, summary) in enumerate(errors):
        sections.append(f"<h3>{_e(name)}</h3>")
        alt = f"error distribution of {name} against fp32"
        sections.append(_plot(error_figure(summary, f"{name}: quantized vs fp32"), f"plot-output-{k}", alt))
        sections.append(_worst_table(summary))
    agreement = "n/a" if report.top1_agreement is None else f"{report.top1_agreement:.2%}"
    summary_line = (
        f"{'PASS' if report.passed else 'FAIL'}: {report.mode}, top-1 agreement with fp32 {agreement} "
        f"(bar {report.min_top1:.0%}) on {report.samples} samples"
    )
    return _page(f"convkit quantize: {report.output}", report.passed, summary_line, sections)
