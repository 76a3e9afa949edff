"""The ``convkit`` command: parses options, calls ``convkit.api``, renders with ``convkit.report.parity``.

No logic of its own, and no heavy import at module level: ``convkit --help`` starts without torch or
TensorFlow (a test proves it).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from convkit import __version__
from convkit.errors import EXIT_OK, EXIT_PARITY_FAILED, EXIT_USAGE, ConvkitError
from convkit.frontends import ALIASES, FRONTENDS

EXIT_INTERNAL = 3

provider_option = click.option(
    "--provider",
    type=click.Choice(["auto", "cpu", "cuda"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="onnxruntime execution provider; auto takes CUDA when onnxruntime has it, else the CPU.",
)
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="intra-op threads (default: usable CPUs)."
)


def _tolerance_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--rtol", type=float, default=None, help="relative tolerance (default 1e-4 for fp32)."
    )(func)
    return click.option(
        "--atol", type=float, default=None, help="absolute tolerance (default 1e-5 for fp32)."
    )(func)


def _remember_backend(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta["keras_backend"] = value


def _with_backend(framework: str | None) -> str | None:
    """``--framework keras --backend jax`` is the ``keras-jax`` front end (TensorFlow is Keras' default)."""
    backend = click.get_current_context().meta.get("keras_backend")
    if backend is None or backend == "tensorflow":
        return framework
    if framework is not None and framework.lower() not in ("keras", "tensorflow", "tf", f"keras-{backend}"):
        raise click.UsageError(f"--backend applies to Keras models, not to --framework {framework}")
    return f"keras-{backend}"


def _source_options(func: Callable[..., Any]) -> Callable[..., Any]:
    decorators = [
        click.option(
            "--framework",
            "-f",
            default=None,
            help=f"{', '.join(FRONTENDS)} (aliases {', '.join(ALIASES)}); inferred if omitted.",
        ),
        click.option(
            "--backend",
            type=click.Choice(["tensorflow", "jax", "torch"]),
            default=None,
            expose_value=False,
            callback=_remember_backend,
            help="Keras 3's backend (with --framework keras): jax and torch run Keras in a worker process.",
        ),
        click.option(
            "--input",
            "inputs",
            multiple=True,
            metavar="NAME:DIMS[:DTYPE[:LOW..HIGH]]",
            help="an input's name and shape, symbolic dims by name: x:batch,3,224,224:float32. Repeatable.",
        ),
        click.option("--data", type=click.Path(), default=None, help=".npz (keys = input names) or .npy."),
        click.option(
            "--weights", type=click.Path(), default=None, help="checkpoint (state dict) to load safely."
        ),
        click.option(
            "--unsafe-allow-pickle",
            is_flag=True,
            help="allow formats that run code when loaded (whole pickled models, Keras Lambda layers). "
            "Only for files you trust.",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="seed of the random inputs."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _report_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--junit", type=click.Path(), default=None, help="write a JUnit XML report.")(func)
    return click.option("--report", type=click.Path(), default=None, help="write the JSON report.")(func)


def _session_options(provider: str, threads: int | None) -> Any:
    from convkit.core.runtime import SessionOptions

    return SessionOptions(provider=provider.lower(), threads=threads)


def _split_choices(text: str, choices: tuple[str, ...], option: str) -> list[str]:
    values = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [v for v in values if v not in choices]
    if unknown or not values:
        raise click.BadParameter(
            f"{', '.join(unknown) or text!r}: choose from {', '.join(choices)}", param_hint=option
        )
    return list(dict.fromkeys(values))


def _runtime_configs(providers: str, optimization: str, threads: int | None) -> list[Any]:
    """Every provider x optimization level combination asked for."""
    from convkit.core.runtime import OPTIMIZATION_LEVELS, PROVIDER_CHOICES, SessionOptions

    return [
        SessionOptions(provider=p, threads=threads, optimization=level)
        for p in _split_choices(providers, PROVIDER_CHOICES, "--providers")
        for level in _split_choices(optimization, OPTIMIZATION_LEVELS, "--optimization")
    ]


def _tolerance(atol: float | None, rtol: float | None) -> Any:
    from convkit.core.compare import Tolerance

    for name, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and value < 0:
            raise click.BadParameter(f"{name} must not be negative")
    return Tolerance(atol=atol, rtol=rtol)


def _finish_report(report: Any, report_path: str | None, junit_path: str | None, quiet: bool = False) -> int:
    from convkit.report.parity import render_text, write_report_files

    write_report_files(report, report_path, junit_path)
    if not quiet:
        click.echo(render_text(report))
    return EXIT_OK if report.passed else EXIT_PARITY_FAILED


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="convkit")
@click.option("--debug", is_flag=True, help="show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Export models to ONNX, prove they compute the same thing, run them with onnxruntime.

    Exit codes: 0 success / parity holds, 1 parity fails, 2 usage or input error, 3 internal error.
    """
    ctx.obj = {"debug": debug}


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of text.")
def inspect(model: str, as_json: bool) -> None:
    """Show an ONNX model's IR version, opsets, inputs, outputs, operators and parameters."""
    from convkit.api import inspect_model
    from convkit.report.parity import render_summary

    summary = inspect_model(model)
    click.echo(json.dumps(summary.to_dict(), indent=2) if as_json else render_summary(summary))


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help=".npz, .npy or a test_data_set_N folder.")
@click.option("--output", "-o", required=True, type=click.Path(), help="where to write the outputs (.npz).")
@provider_option
@threads_option
def run(model: str, data: str, output: str, provider: str, threads: int | None) -> None:
    """Run MODEL on the inputs in --data with onnxruntime and save the outputs as .npz."""
    from convkit.api import run_model
    from convkit.core.artifacts import save_npz_atomic

    result = run_model(model, data, _session_options(provider, threads))
    save_npz_atomic(output, result.outputs)
    for note in result.notes:
        click.echo(f"note: {note}")
    shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in result.outputs.items())
    click.echo(f"ran on the {result.provider} provider; wrote {output}: {shapes}")


localize_option = click.option(
    "--localize",
    "localize",
    is_flag=False,
    flag_value="auto",
    default=None,
    metavar="[ORACLE]",
    help="find the first diverging node: against the framework's own layers ('framework', the default with "
    "--source), onnx's reference implementation ('reference', the default without), 'unoptimized' "
    "onnxruntime, or a reference model's path.",
)


@cli.command()
@click.argument("target", type=click.Path())
@click.option("--source", default=None, help="verify against this framework model (file or module:factory).")
@_source_options
@_tolerance_options
@provider_option
@threads_option
@click.option(
    "--providers",
    default=None,
    metavar="LIST",
    help="check on several providers in one report, e.g. cpu,cuda (overrides --provider).",
)
@click.option(
    "--optimization",
    default="all",
    show_default=True,
    metavar="LIST",
    help="onnxruntime graph optimization level(s): all, extended, basic, disabled; a list checks each.",
)
@localize_option
@_report_options
def verify(
    target: str,
    source: str | None,
    framework: str | None,
    inputs: tuple[str, ...],
    data: str | None,
    weights: str | None,
    unsafe_allow_pickle: bool,
    seed: int,
    atol: float | None,
    rtol: float | None,
    provider: str,
    threads: int | None,
    providers: str | None,
    optimization: str,
    localize: str | None,
    report: str | None,
    junit: str | None,
) -> None:
    """Check that an ONNX model computes what it should.

    TARGET is a test-case folder (model.onnx + test_data_set_N/) or a model file: without --source, the
    stored test_data_set_N outputs beside it are the reference; with --source, the framework itself is.
    """
    from convkit import api

    tol = _tolerance(atol, rtol)
    session = _runtime_configs(providers or provider, optimization, threads)
    if source is None:
        if inputs or data or framework or weights:
            raise click.UsageError("--input, --data, --framework and --weights need --source")
        result = api.verify_testcase(target, tol, session, localize)
    else:
        from convkit.core.inputs import parse_input_spec
        from convkit.frontends import LoadOptions

        result = api.verify_model(
            target,
            source,
            _with_backend(framework),
            [parse_input_spec(text) for text in inputs],
            data,
            LoadOptions(weights=weights, unsafe_pickle=unsafe_allow_pickle),
            tol,
            session,
            seed,
            localize,
        )
    if not result.passed and not localize:
        result.notes.append("rerun with --localize to find the first diverging node")
    sys.exit(_finish_report(result, report, junit))


@cli.command()
@click.argument("source")
@click.option("--output", "-o", required=True, type=click.Path(), help="the .onnx file to write.")
@_source_options
@click.option("--static", is_flag=True, help="fix every dimension (the first is dynamic by default).")
@click.option("--opset", type=int, default=None, help="ONNX opset (the exporter's default if omitted).")
@click.option("--exporter", default=None, help="force one exporter (torch: dynamo or torchscript).")
@click.option("--no-test-data", is_flag=True, help="do not write test_data_set_0/ beside the model.")
@click.option("--verbose", "-v", is_flag=True, help="show the exporters' own output.")
@_tolerance_options
@provider_option
@_report_options
def export(
    source: str,
    output: str,
    framework: str | None,
    inputs: tuple[str, ...],
    data: str | None,
    weights: str | None,
    unsafe_allow_pickle: bool,
    seed: int,
    static: bool,
    opset: int | None,
    exporter: str | None,
    no_test_data: bool,
    verbose: bool,
    atol: float | None,
    rtol: float | None,
    provider: str,
    report: str | None,
    junit: str | None,
) -> None:
    """Export SOURCE (a model file or path/to/file.py:factory) to ONNX and check it on the example inputs.

    Writes the model, test_data_set_0/ (inputs and the framework's outputs) and MODEL.manifest.json.
    """
    from convkit.api import export_model
    from convkit.core.inputs import parse_input_spec
    from convkit.frontends import ExportOptions, LoadOptions

    summary = export_model(
        source,
        output,
        _with_backend(framework),
        [parse_input_spec(text) for text in inputs],
        data,
        static,
        LoadOptions(weights=weights, unsafe_pickle=unsafe_allow_pickle, verbose=verbose),
        ExportOptions(opset=opset, exporter=exporter, verbose=verbose),
        not no_test_data,
        _tolerance(atol, rtol),
        _session_options(provider, None),
        seed,
    )
    specs = "; ".join(spec.describe() for spec in summary.specs)
    click.echo(
        f"exported {summary.framework} model to {summary.model_path} with {summary.export.exporter} "
        f"(opset {summary.export.opset}); inputs: {specs}"
    )
    if summary.test_data_dir:
        click.echo(f"wrote {summary.test_data_dir} and {summary.manifest_path}")
    sys.exit(_finish_report(summary.report, report, junit))


@cli.command()
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
    from convkit.report.parity import render_bench

    try:
        sizes = [int(part) for part in batch_sizes.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(
            "expected comma-separated integers, e.g. 1,64", param_hint="--batch-sizes"
        ) from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("batch sizes must be positive", param_hint="--batch-sizes")
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


@cli.command()
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
    from convkit.quantize import quantize_model

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


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help=".npz, .npy or a test_data_set_N folder.")
@click.option("--output", "-o", required=True, type=click.Path(), help="the repro folder to write.")
@click.option(
    "--oracle",
    default="reference",
    show_default=True,
    help="what onnxruntime is checked against: 'reference', 'unoptimized', or a reference model's path.",
)
@_tolerance_options
def reduce(model: str, data: str, output: str, oracle: str, atol: float | None, rtol: float | None) -> None:
    """Cut MODEL down to the node that diverges and write it as a self-contained test case.

    The repro folder holds model.onnx and test_data_set_0/ (the oracle's values), so `convkit verify DIR`
    or any ONNX test runner reproduces the failure.
    """
    from convkit.core.artifacts import load_arrays
    from convkit.diagnose.reduce import reduce_model
    from convkit.graph.model import load_onnx

    loaded = load_onnx(model)
    reference = oracle if oracle in ("reference", "unoptimized") else load_onnx(oracle)
    repro = reduce_model(
        loaded, load_arrays(data, loaded.input_names), output, reference, _tolerance(atol, rtol)
    )
    click.echo(repro.localization.describe())
    click.echo(f"wrote {repro.folder}: {repro.nodes} node(s); check it with `convkit verify {repro.folder}`")


@cli.command()
@click.option("--framework", "-f", required=True, help=f"whose training loop: {', '.join(FRONTENDS)}.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(), help="canonical weights to write (.npz).")
def train(framework: str, epochs: int, seed: int, output: str) -> None:
    """Train the reference CNN on the bundled digits with FRAMEWORK's own training loop.

    Saves canonical weights that every framework loads (convkit matrix --weights OUTPUT).
    """
    from convkit.reference.training import train as train_reference

    with click.progressbar(length=epochs, label=f"training ({framework})", file=sys.stderr) as bar:

        def advance(epoch: int, total: int, metrics: dict[str, float]) -> None:
            bar.label = f"training ({framework}) " + " ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            bar.update(1)

        result = train_reference(framework, output, epochs, seed, advance)
    click.echo(
        f"{result.framework}: {result.epochs} epochs in {result.seconds:.1f} s, "
        f"test accuracy {result.test_accuracy:.4f}; wrote {output}"
    )


@cli.command()
@click.option(
    "--frameworks", default=None, metavar="LIST", help="comma-separated (default: every front end)."
)
@click.option("--weights", type=click.Path(), default=None, help="canonical weights (default: bundled).")
@click.option("--out-dir", default="convkit-matrix", show_default=True, type=click.Path())
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="held-out digits to compare on (360 at most).",
)
@_tolerance_options
@click.option("--json", "json_path", type=click.Path(), default=None, help="write the matrix as JSON.")
@click.option("--junit", type=click.Path(), default=None, help="write a JUnit XML report.")
def matrix(
    frameworks: str | None,
    weights: str | None,
    out_dir: str,
    samples: int,
    atol: float | None,
    rtol: float | None,
    json_path: str | None,
    junit: str | None,
) -> None:
    """The reference CNN in every framework: export, verify each against itself, compare all pairs."""
    from convkit.core.artifacts import write_text_atomic
    from convkit.reference.matrix import render_matrix, run_matrix, to_junit_xml

    names = [part.strip() for part in frameworks.split(",") if part.strip()] if frameworks else None
    result = run_matrix(
        names,
        weights,
        out_dir,
        _tolerance(atol, rtol),
        _session_options("cpu", None),
        samples,
        progress=lambda name: click.echo(f"matrix: {name} ...", err=True),
    )
    if json_path:
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    if junit:
        write_text_atomic(junit, to_junit_xml(result))
    click.echo(render_matrix(result))
    sys.exit(EXIT_OK if result.passed else EXIT_PARITY_FAILED)


@cli.command()
@click.option(
    "--out-dir", default="convkit-demo", show_default=True, type=click.Path(), help="where to write exports."
)
@provider_option
def demo(out_dir: str, provider: str) -> None:
    """Export the bundled models, verify them, run them, and print the parity table."""
    from convkit.reference.demo import run_demo

    sys.exit(run_demo(out_dir, _session_options(provider, None), click.echo))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of text.")
def doctor(as_json: bool) -> None:
    """Show which framework front ends are ready here (and what installs the others) and the runtime.

    Exit 1 when a framework is installed but fails to load.
    """
    from convkit.diagnose.doctor import diagnose
    from convkit.report.parity import render_doctor

    found = diagnose()
    click.echo(json.dumps(found.to_dict(), indent=2) if as_json else render_doctor(found))
    sys.exit(EXIT_PARITY_FAILED if any(f.status == "blocked" for f in found.frameworks) else EXIT_OK)


@cli.group()
def env() -> None:
    """Framework environments: frameworks whose pins cannot live beside convkit's (PaddlePaddle) run in a
    virtual environment of their own (.convkit-envs/NAME, or $CONVKIT_ENVS/NAME), driven as a subprocess."""


@env.command("create")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--force", is_flag=True, help="rebuild even when the environment is up to date.")
def env_create(names: tuple[str, ...], force: bool) -> None:
    """Create environment NAME from convkit/frontends/NAME/NAME.lock (a no-op when it is up to date); every
    known environment when no NAME is given."""
    from convkit.frontends._worker.envs import create_env, known_envs, lock_path

    chosen = list(names) or known_envs()
    for name in chosen:
        lock_path(name)  # an unknown name fails before anything is built
    for name in chosen:
        result = create_env(name, force, lambda line: click.echo(line, err=True))
        click.echo(result.describe())


@env.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of text.")
def env_list(as_json: bool) -> None:
    """Show each known environment: ready, missing (with the command that creates it) or stale."""
    from convkit.frontends._worker.envs import list_envs, render_env_list

    statuses = list_envs()
    click.echo(
        json.dumps([s.to_dict() for s in statuses], indent=2) if as_json else render_env_list(statuses)
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line and exit 2; bugs exit 3 (tracebacks with --debug)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="convkit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except ConvkitError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("this is a bug in convkit; rerun with --debug for the traceback and report it", err=True)
        sys.exit(EXIT_INTERNAL)
