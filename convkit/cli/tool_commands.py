"""The tools that work on an exported model: ``bench``, ``quantize`` and ``reduce``."""

from __future__ import annotations

import json
import sys

import click

from convkit.cli.options import threads_option, tolerance, tolerance_options
from convkit.errors import EXIT_OK, EXIT_PARITY_FAILED


@click.command()
@click.argument("model", type=click.Path())
@click.option("--source", default=None, help="also time the framework itself (file or module:factory).")
@click.option("--framework", "-f", default=None, help="the source's framework; inferred if omitted.")
@click.option("--batch-sizes", default="1,64", show_default=True, help="comma-separated batch sizes.")
@threads_option
@click.option("--seconds", type=float, default=2.0, show_default=True, help="minimum time per batch size.")
@click.option("--json", "json_path", type=click.Path(), default=None, help="write the results as JSON.")
def bench(
    model: str,
    source: str | None,
    framework: str | None,
    batch_sizes: str,
    threads: int | None,
    seconds: float,
    json_path: str | None,
) -> None:
    """Time MODEL in onnxruntime against the framework (eager and compiled), interleaved in one process.

    Prints latency (median, p10, p90), throughput, achieved GFLOP/s and the share of the CPU's peak.
    """
    from convkit.core.artifacts import write_text_atomic
    from convkit.perf.bench import bench_model
    from convkit.perf.peak import estimate_peak
    from convkit.report.tables import render_bench

    try:
        sizes = [int(part) for part in batch_sizes.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(
            "expected comma-separated integers, e.g. 1,64", param_hint="--batch-sizes"
        ) from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("batch sizes must be positive", param_hint="--batch-sizes")
    from convkit.core.outputs import check_outputs
    from convkit.perf.bench import check_batch_sizes

    check_outputs({"--json": json_path}, [model, source])
    check_batch_sizes(model, sizes, threads)
    click.echo("measuring the CPU's peak ...", err=True)
    peak = estimate_peak()
    # NOTE: why a nominal length: the number of rounds depends on speed; the bar shows activity, not ETA.
    steps = len(sizes) * 40
    with click.progressbar(length=steps, label="benchmarking", file=sys.stderr) as bar:

        def advance(count: int) -> None:
            if bar.pos < steps - 1:
                bar.update(count)

        result = bench_model(model, sizes, threads, source, framework, seconds, peak, advance)
    if json_path:
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    click.echo(render_bench(result))


@click.command()
@click.argument("model", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(), help="the quantized .onnx to write.")
@click.option(
    "--mode",
    type=click.Choice(["static", "dynamic", "fp16"]),
    default="static",
    show_default=True,
    help="static QDQ int8 (needs --calibration), dynamic int8, or fp16.",
)
@click.option("--fp16", "fp16", is_flag=True, help="shorthand for --mode fp16.")
@click.option(
    "--calibration", type=click.Path(), default=None, help="calibration inputs (.npz, batch first)."
)
@click.option("--eval-data", type=click.Path(), default=None, help="held-out inputs for the parity check.")
@click.option("--per-channel", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True)
@click.option("--min-top1", type=float, default=0.99, show_default=True, help="top-1 agreement bar vs fp32.")
@click.option("--force", is_flag=True, help="write the model even when it fails the bar.")
@click.option("--json", "json_path", type=click.Path(), default=None, help="write the report as JSON.")
def quantize(
    model: str,
    output: str,
    mode: str,
    fp16: bool,
    calibration: str | None,
    eval_data: str | None,
    per_channel: str,
    min_top1: float,
    force: bool,
    json_path: str | None,
) -> None:
    """Quantize MODEL (int8 or fp16) and write it only if it keeps parity with fp32 (top-1 agreement)."""
    from convkit.core.artifacts import write_text_atomic
    from convkit.core.outputs import check_outputs
    from convkit.quantize import quantize_model

    check_outputs({"-o": output, "--json": json_path}, [model, calibration, eval_data])
    result = quantize_model(
        model, output, "fp16" if fp16 else mode, calibration, eval_data, per_channel, min_top1, force
    )
    if json_path:
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    agreement = "n/a" if result.top1_agreement is None else f"{result.top1_agreement:.2%}"
    click.echo(
        f"{result.mode}: top-1 agreement with fp32 {agreement} on {result.samples} samples "
        f"(bar {result.min_top1:.0%}), max abs diff {result.max_abs_diff:.3g}, "
        f"mean {result.mean_abs_diff:.3g}; size {result.fp32_bytes:,} -> {result.quantized_bytes:,} bytes"
        + ("" if result.per_channel is None else f"; per-channel {'on' if result.per_channel else 'off'}")
    )
    if result.speedup is not None:
        click.echo(
            f"speed: fp32 {result.fp32_ms:.3f} ms, {result.mode} {result.quantized_ms:.3f} ms per batch "
            f"({result.speedup:.2f}x)"
        )
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.written:
        click.echo(f"wrote {output}")
    else:
        click.echo("FAIL: not written: the quantized model loses parity (use --force to write it anyway)")
    sys.exit(EXIT_OK if result.passed else EXIT_PARITY_FAILED)


@click.command()
@click.argument("model", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help=".npz, .npy or a test_data_set_N folder.")
@click.option("--output", "-o", required=True, type=click.Path(), help="the repro folder to write.")
@click.option(
    "--oracle",
    default="reference",
    show_default=True,
    help="what onnxruntime is checked against: 'reference', 'unoptimized', or a reference model's path.",
)
@tolerance_options
def reduce(model: str, data: str, output: str, oracle: str, atol: float | None, rtol: float | None) -> None:
    """Cut MODEL down to the node that diverges and write it as a self-contained test case.

    The repro folder holds model.onnx and test_data_set_0/ (the oracle's values), so `convkit verify DIR`
    or any ONNX test runner reproduces the failure.
    """
    from convkit.core.artifacts import load_arrays
    from convkit.core.outputs import check_outputs
    from convkit.diagnose.reduce import reduce_model
    from convkit.graph.model import load_onnx

    oracle_file = None if oracle in ("reference", "unoptimized") else oracle
    check_outputs({}, [model, data, oracle_file], folders={"-o": output})
    loaded = load_onnx(model)
    reference = oracle if oracle in ("reference", "unoptimized") else load_onnx(oracle)
    repro = reduce_model(
        loaded, load_arrays(data, loaded.input_names), output, reference, tolerance(atol, rtol)
    )
    click.echo(repro.localization.describe())
    click.echo(f"wrote {repro.folder}: {repro.nodes} node(s); check it with `convkit verify {repro.folder}`")
