"""The text tables of the commands that report something other than parity: ``inspect``, ``bench``,
``doctor``, ``matrix`` and ``env list``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from convkit.report.text import format_table

if TYPE_CHECKING:
    from pathlib import Path

    from convkit.diagnose.doctor import Diagnosis
    from convkit.frontends._worker.envs import EnvStatus
    from convkit.graph.info import ModelSummary
    from convkit.perf.bench import BenchReport
    from convkit.quantize import QuantizeReport
    from convkit.reference.matrix import MatrixReport

# The statuses of a matrix row (``FrameworkResult.status``), in the order its last line counts them.
MATRIX_STATUS_ORDER = ("pass", "fail", "unavailable", "error")


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
    lines += ["", "inputs:", format_table(["name", "dtype", "shape"], io_rows(summary.inputs))]
    lines += ["", "outputs:", format_table(["name", "dtype", "shape"], io_rows(summary.outputs))]
    ops = [[op, str(n)] for op, n in summary.op_types.items()]
    lines += ["", "operators:", format_table(["op type", "count"], ops)]
    return "\n".join(lines)


def render_bench(report: BenchReport) -> str:
    """``convkit bench``'s table, each row's time relative to convkit's onnxruntime session (the first row) at
    its batch size."""
    rows = []
    for t in report.timings:
        base = next(x for x in report.timings if x.batch == t.batch)
        rows.append(
            [
                str(t.batch),
                t.contender,
                f"{t.median_ms:.3f}",
                f"{t.p90_ms:.3f}",
                f"{t.p99_ms:.3f}",
                f"{t.samples_per_s:,.0f}",
                "-" if t.gflops is None else f"{t.gflops:.1f}",
                "-" if t.peak_share is None else f"{t.peak_share:.0%}",
                f"{t.median_ms / base.median_ms:.2f}x",
            ]
        )
    headers = [
        "batch",
        "contender",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "samples/s",
        "GFLOP/s",
        "% peak",
        "time / convkit",
    ]
    lines = [
        f"{report.model}: "
        + (
            f"{report.flops_per_sample / 1e6:.2f} MFLOP per sample"
            if report.flops_per_sample
            else "FLOPs not counted"
        )
        + f", {report.threads} threads",
        f"onnxruntime {report.onnxruntime} ({report.provider}) on {report.cpu_model}, {report.timestamp}; "
        f"{report.warmup} warm-up calls, at least {report.min_calls} timed calls per contender",
    ]
    if report.peak is not None:
        nominal = "unknown" if report.peak.nominal_gflops is None else f"{report.peak.nominal_gflops:.0f}"
        lines.append(
            f"peak fp32: nominal {nominal} GFLOP/s ({report.peak.description}); "
            f"measured matmul {report.peak.measured_gflops:.0f} GFLOP/s"
        )
    lines.append(format_table(headers, rows))
    # NOTE: why a legend: convkit's own session is the 1.00x row; without saying so "time vs ORT" read as
    # convkit against onnxruntime
    lines.append(
        "time / convkit: the row's median over convkit's onnxruntime session's at that batch "
        "(1.00x: that session; 2.00x: twice as slow; 0.50x: twice as fast)"
    )
    lines += [f"note: {note}" for note in report.notes]
    lines += [f"warning: {warning}" for warning in report.warnings]
    return "\n".join(lines)


def render_quantize(report: QuantizeReport) -> str:
    """``convkit quantize``'s text: every bar with its value, the measurements, size, speed and verdict.

    NOTE: why every line from the report's own fields: the text must say what ``--json`` holds.
    """
    scheme = "" if report.per_channel is None else (" per-channel" if report.per_channel else " per-tensor")
    lines = [f"{report.mode}{scheme} vs fp32 on {report.samples} samples:"]
    lines += [f"  {check.describe()}" for check in report.checks]
    lines.append(
        f"  measured: max abs diff {report.max_abs_diff:.3g}, mean abs diff {report.mean_abs_diff:.3g}, "
        f"relative error {report.rel_error:.3g}, cosine similarity {report.cosine:.6f}"
    )
    ratio = report.quantized_bytes / report.fp32_bytes if report.fp32_bytes else float("nan")
    lines.append(
        f"size: fp32 {report.fp32_bytes:,} -> {report.mode} {report.quantized_bytes:,} bytes "
        f"({ratio:.2f}x: {'LARGER' if report.larger else 'smaller'})"
    )
    if report.speedup is not None:
        lines.append(
            f"speed: fp32 {report.fp32_ms:.3f} ms, {report.mode} {report.quantized_ms:.3f} ms per batch "
            f"({report.speedup:.2f}x: {'faster' if report.faster else 'NOT faster'})"
        )
    lines += [f"note: {note}" for note in report.notes]
    failed = "; ".join(check.describe(verdict=False) for check in report.checks if not check.passed)
    if report.passed:
        lines.append(f"PASS: wrote {report.output}")
    elif report.written:
        lines.append(f"FAIL: {failed}; written anyway (--force): {report.output}")
    else:
        lines.append(f"FAIL: {failed}; not written (--force writes it anyway)")
    return "\n".join(lines)


def render_doctor(found: Diagnosis) -> str:
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
    lines.append(format_table(["framework", "status", "versions / what to do"], rows))
    return "\n".join(lines)


def render_matrix(report: MatrixReport) -> str:
    """Per-framework rows, then the frameworks x frameworks table of max abs differences."""
    rows = [
        [
            r.framework,
            r.status.upper(),
            "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.3g}",
            r.exporter or "-",
            r.reason or "",
        ]
        for r in report.frameworks
    ]
    lines = [
        f"reference CNN, weights {report.weights}, {report.samples} digits",
        format_table(["framework", "status", "max abs vs native", "exporter", "details"], rows),
    ]
    for r in report.frameworks:
        if r.status == "unavailable" and r.install:
            lines.append(f"  {r.framework}: {r.install}")
    if report.pairwise:
        names = list(report.pairwise)
        table = [[a, *(f"{report.pairwise[a][b]:.3g}" for b in names)] for a in names]
        lines += [
            "",
            "ONNX outputs, max abs difference between frameworks:",
            format_table(["", *names], table),
        ]
    lines.append(("PASS" if report.passed else "FAIL") + ": " + _matrix_summary(report))
    return "\n".join(lines)


def _matrix_summary(report: MatrixReport) -> str:
    counts = {status: sum(r.status == status for r in report.frameworks) for status in MATRIX_STATUS_ORDER}
    parts = [f"{n} {status}" for status, n in counts.items() if n]
    pair = (
        "frameworks agree with each other"
        if report.pairwise_passed
        else "frameworks DISAGREE with each other"
    )
    return ", ".join(parts) + ("; " + pair if len(report.pairwise) > 1 else "")


def render_env_list(statuses: list[EnvStatus], locks: Path) -> str:
    """``convkit env list``'s text: one line per environment, and for those not ready what creates them.

    Args:
        statuses: the environments, as ``list_envs`` returns them.
        locks: the folder of the lock files, named when there is no environment at all.

    Returns:
        One line per environment: name, state, path, and unless ready, why and the command that creates it.
    """
    if not statuses:
        return f"no framework environments are defined (no lock files in {locks})"
    width = max(len(s.name) for s in statuses)
    lines = []
    for status in statuses:
        line = f"{status.name:<{width}}  {status.state:<7}  {status.path}"
        if status.state != "ready":
            line += f"  ({status.detail}: {status.create_command})"
        lines.append(line)
    return "\n".join(lines)
