"""Render a ``ParityReport`` or a ``ModelSummary``: a text table for people, JSON and JUnit XML for CI.

The numbers printed are the numbers in the files: every renderer reads the same report object.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from typing import Any

from convkit import __version__
from convkit.core.artifacts import write_text_atomic
from convkit.core.compare import OutputComparison, ParityReport
from convkit.graph.info import ModelSummary


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.2e}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


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
            _num(c.max_abs_diff),
            _num(c.max_rel_diff),
            "-" if c.mismatch_fraction is None else f"{c.mismatch_fraction:.2%}",
            _num(c.min_passing_atol),
            "-" if c.cosine_similarity is None else f"{c.cosine_similarity:.6f}",
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
        "min atol",
        "cosine",
        "result",
    ]
    if with_runtime:
        headers.insert(0, "runtime")
    lines = [head, _table(headers, rows)]
    lines += [f"note: {note}" for note in report.notes]
    lines.append(verdict(report))
    return "\n".join(lines)


def _tolerance_text(c: OutputComparison) -> str:
    return f"atol={c.atol:g}, rtol={c.rtol:g}"


def verdict(report: ParityReport) -> str:
    """One line: PASS with the worst margin, or FAIL naming the worst output and the atol that would pass."""
    if not report.comparisons:
        return "FAIL: nothing was compared"
    data_sets = len({c.data_set for c in report.comparisons})
    worst = report.worst
    assert worst is not None
    if report.passed:
        return (
            f"PASS: {len(report.comparisons)} output comparisons over {data_sets} data set(s) within "
            f"{_tolerance_text(worst)}; largest difference {_num(worst.max_abs_diff)}"
        )
    failed = [c for c in report.comparisons if not c.passed]
    where = f" on {worst.runtime}" if worst.runtime else ""
    return (
        f"FAIL: {len(failed)} of {len(report.comparisons)} output comparisons differ; worst: {worst.name!r} "
        f"in data set {worst.data_set!r}{where}: {worst.reason}"
    )


def to_json(report: ParityReport) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"


def to_junit_xml(report: ParityReport, suite_name: str = "convkit.verify") -> str:
    """JUnit XML: one testsuite, one testcase per output and data set, ``<failure>`` with the reason."""
    failures = sum(not c.passed for c in report.comparisons)
    suite = ET.Element(
        "testsuite",
        name=suite_name,
        tests=str(len(report.comparisons)),
        failures=str(failures),
        errors="0",
        skipped="0",
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("model", report.model),
        ("reference", report.reference),
        ("provider", report.provider),
        ("convkit_version", __version__),
    ):
        ET.SubElement(props, "property", name=key, value=value)
    classname = os.path.basename(report.model)
    for c in report.comparisons:
        name = "/".join(part for part in (c.runtime, c.data_set, c.name) if part)
        case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
        detail = (
            f"max_abs_diff={_num(c.max_abs_diff)} max_rel_diff={_num(c.max_rel_diff)} "
            f"min_passing_atol={_num(c.min_passing_atol)} ({_tolerance_text(c)})"
        )
        if c.passed:
            ET.SubElement(case, "system-out").text = detail
        else:
            failure = ET.SubElement(
                case, "failure", message=c.reason or "values differ", type="ParityFailure"
            )
            failure.text = detail
    if report.notes:
        ET.SubElement(suite, "system-out").text = "\n".join(report.notes)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def write_report_files(report: ParityReport, json_path: str | None, junit_path: str | None) -> None:
    """Write the JSON and/or JUnit files, each atomically."""
    if json_path:
        write_text_atomic(json_path, to_json(report))
    if junit_path:
        write_text_atomic(junit_path, to_junit_xml(report))


def render_summary(summary: ModelSummary) -> str:
    """``convkit inspect``'s text output."""

    def io_rows(items: list[Any]) -> list[list[str]]:
        return [
            [t.name, t.dtype, "[" + ",".join("?" if d is None else str(d) for d in t.shape) + "]"]
            for t in items
        ]

    opsets = ", ".join(f"{domain} {version}" for domain, version in summary.opsets.items())
    lines = [
        f"model:       {summary.path} ({summary.file_bytes:,} bytes)",
        f"IR version:  {summary.ir_version}",
        f"opsets:      {opsets}",
        f"producer:    {summary.producer or '(not recorded)'}",
        f"parameters:  {summary.parameter_count:,} ({summary.parameter_bytes:,} bytes)",
        f"nodes:       {summary.node_count}",
    ]
    if summary.external_data_files:
        lines.append(f"external:    {', '.join(summary.external_data_files)}")
    lines += ["", "inputs:", _table(["name", "dtype", "shape"], io_rows(summary.inputs))]
    lines += ["", "outputs:", _table(["name", "dtype", "shape"], io_rows(summary.outputs))]
    ops = [[op, str(n)] for op, n in summary.op_types.items()]
    lines += ["", "operators:", _table(["op type", "count"], ops)]
    return "\n".join(lines)


def render_bench(report: Any) -> str:
    """``convkit bench``'s table, with speed-ups against the first onnxruntime row at each batch size."""
    rows = []
    for t in report.timings:
        base = next(x for x in report.timings if x.batch == t.batch)
        rows.append(
            [
                str(t.batch),
                t.contender,
                f"{t.median_ms:.3f}",
                f"{t.p10_ms:.3f}",
                f"{t.p90_ms:.3f}",
                f"{t.samples_per_s:,.0f}",
                "-" if t.gflops is None else f"{t.gflops:.1f}",
                "-" if t.peak_share is None else f"{t.peak_share:.0%}",
                f"{t.median_ms / base.median_ms:.2f}x",
            ]
        )
    headers = [
        "batch",
        "contender",
        "median ms",
        "p10 ms",
        "p90 ms",
        "samples/s",
        "GFLOP/s",
        "% peak",
        "time vs ORT",
    ]
    lines = [
        f"{report.model}: {report.flops_per_sample / 1e6:.2f} MFLOP per sample, {report.threads} threads",
    ]
    if report.peak is not None:
        nominal = "unknown" if report.peak.nominal_gflops is None else f"{report.peak.nominal_gflops:.0f}"
        lines.append(
            f"peak fp32: nominal {nominal} GFLOP/s ({report.peak.description}); "
            f"measured matmul {report.peak.measured_gflops:.0f} GFLOP/s"
        )
    lines.append(_table(headers, rows))
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def render_doctor(found: Any) -> str:
    """``convkit doctor``'s table: the runtime, then one row per front end."""
    lines = [
        f"convkit {found.convkit}, Python {found.python} on {found.platform}, {found.cpus} CPU(s)",
        f"onnx {found.onnx}, onnxruntime {found.onnxruntime} ({', '.join(found.providers)})",
        "",
    ]
    rows = []
    for state in found.frameworks:
        if state.status == "ready":
            detail = ", ".join(f"{k} {v}" for k, v in state.versions.items())
        else:
            detail = state.reason or ""
            if state.install and state.install not in detail:
                detail += f"; install: {state.install}"
        rows.append([state.framework, state.status, detail])
    lines.append(_table(["framework", "status", "versions / what to do"], rows))
    return "\n".join(lines)
