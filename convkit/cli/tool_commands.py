"""The tools that work on an exported model: ``bench``, ``quantize`` and ``reduce``."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

from convkit.cli.options import html_option, provider_option, threads_option, tolerance, tolerance_options
from convkit.errors import EXIT_OK, EXIT_PARITY_FAILED


def _bound(text: str) -> float:
    """A finite number >= 0 (an error bound)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    # NOTE: why finite: every comparison with nan is false, so a nan bar would pass anything
    if not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{text!r}: expected a finite number >= 0")
    return value


def _cosine(text: str) -> float:
    """A cosine similarity bar, from -1 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not -1 <= value <= 1:
        raise click.BadParameter(f"{text!r}: expected a number from -1 to 1")
    return value


@click.command()
@click.argument("model", type=click.Path())
@click.option("--source", default=None, help="also time the framework itself (file or module:factory).")
@click.option("--framework", "-f", default=None, help="the source's framework; inferred if omitted.")
@click.option("--batch-sizes", default="1,64", show_default=True, help="comma-separated batch sizes.")
@click.option(
    "--data", type=click.Path(), default=None, help="time on these inputs (.npz, keys = input names)."
)
@provider_option
@threads_option
@click.option("--seconds", type=float, default=2.0, show_default=True, help="minimum time per batch size.")
@click.option(
    "--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="untimed calls first."
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="minimum timed calls per contender.",
)
@click.option("--json", "json_path", type=click.Path(), default=None, help="write the results as JSON.")
@html_option
@click.pass_context
def bench(
    ctx: click.Context,
    model: str,
    source: str | None,
    framework: str | None,
    batch_sizes: str,
    data: str | None,
    provider: str,
    threads: int | None,
    seconds: float,
    warmup: int,
    iterations: int,
    json_path: str | None,
    html: str | None,
) -> None:
    """Time MODEL in onnxruntime against the framework (eager and compiled), interleaved in one process.

    Prints latency (p50, p90, p99), throughput, achieved GFLOP/s and the share of the CPU's peak.
    """
    from click.core import ParameterSource

    from convkit.core.artifacts import write_text_atomic
    from convkit.perf.bench import bench_model
    from convkit.perf.peak import estimate_peak
    from convkit.progress import step
    from convkit.report.tables import render_bench

    if data is not None and ctx.get_parameter_source("batch_sizes") == ParameterSource.COMMANDLINE:
        raise click.BadParameter("--data sets the batch (the data's own): drop --batch-sizes")

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

    check_outputs({"--json": json_path, "--html": html}, [model, source, data])
    check_batch_sizes(model, [] if data else sizes, threads, provider.lower())
    feeds = None
    if data is not None:
        from convkit.core.artifacts import load_arrays
        from convkit.core.inputs import check_names
        from convkit.graph.model import load_onnx

        names = load_onnx(model, weights=False).input_names
        feeds = load_arrays(data, names)
        check_names(list(feeds), names, f"the data in {data}")
    step("measuring the CPU's peak")
    peak = estimate_peak()
    result = bench_model(
        model,
        sizes,
        threads,
        source,
        framework,
        seconds,
        peak,
        provider=provider.lower(),
        data=feeds,
        warmup=warmup,
        min_calls=iterations,
    )
    if json_path:
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    if html is not None:
        from convkit.report.html import render_bench_html, write_html

        write_html(html, render_bench_html(result))
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
@click.option(
    "--min-top1", type=_bound, default=0.99, show_default=True, help="top-1 agreement bar (classifiers)."
)
@click.option(
    "--max-rel-error",
    type=_bound,
    default=None,
    help="largest ||int8 - fp32|| / ||fp32|| over the outputs (default 0.05 for models that are not "
    "classifiers; given, it gates every model).",
)
@click.option("--max-abs-diff", type=_bound, default=None, help="largest absolute difference of any output.")
@click.option("--min-cosine", type=_cosine, default=None, help="smallest cosine similarity of the outputs.")
@click.option("--force", is_flag=True, help="write the model even when it fails a bar.")
@click.option("--json", "json_path", type=click.Path(), default=None, help="write the report as JSON.")
@html_option
def quantize(
    model: str,
    output: str,
    mode: str,
    fp16: bool,
    calibration: str | None,
    eval_data: str | None,
    per_channel: str,
    min_top1: float,
    max_rel_error: float | None,
    max_abs_diff: float | None,
    min_cosine: float | None,
    force: bool,
    json_path: str | None,
    html: str | None,
) -> None:
    """Quantize MODEL (int8 or fp16) and write it only if it keeps parity with fp32.

    Parity: top-1 agreement for a classifier, relative error for any other model, and the bars given.
    """
    from convkit.core.artifacts import write_text_atomic
    from convkit.core.outputs import check_outputs
    from convkit.quantize import quantize_model
    from convkit.report.tables import render_quantize

    check_outputs({"-o": output, "--json": json_path, "--html": html}, [model, calibration, eval_data])
    errors: list[tuple[str, Any]] = []
    observe = None
    if html is not None:
        from convkit.report.plots import summarize_errors

        def observe(name: str, fp32: Any, quantized: Any) -> None:
            summary = summarize_errors(fp32, quantized, max_abs_diff or 0.0, 0.0)
            if summary is not None:
                errors.append((name, summary))

    result = quantize_model(
        model,
        output,
        "fp16" if fp16 else mode,
        calibration,
        eval_data,
        per_channel,
        min_top1,
        force,
        max_abs_diff=max_abs_diff,
        max_rel_error=max_rel_error,
        min_cosine=min_cosine,
        observe=observe,
    )
    if json_path:
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    if html is not None:
        from convkit.report.html import render_quantize_html, write_html

        write_html(html, render_quantize_html(result, errors))
    click.echo(render_quantize(result))
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
