"""The commands on one model: ``inspect``, ``run``, ``verify`` and ``export``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from convkit.cli.options import (
    error_report,
    finish_report,
    html_option,
    localize_option,
    provider_option,
    report_options,
    runtime_configs,
    session_options,
    source_options,
    threads_option,
    tolerance,
    tolerance_options,
    with_backend,
)


def _check_timeout(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    from convkit.errors import ConvkitError

    # NOTE: why finite and bounded: nan passes every comparison, inf never ends, and a wait past
    # threading.TIMEOUT_MAX fails inside Python instead of here
    if value is not None and not (math.isfinite(value) and 0 < value <= threading.TIMEOUT_MAX):
        raise ConvkitError(
            f"--timeout {value} is not a number of seconds > 0",
            f"give a finite number of seconds (at most {threading.TIMEOUT_MAX:.0f}), e.g. --timeout 60",
        )
    return value


timeout_option = click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    callback=_check_timeout,
    help="stop an inference that runs longer than this (a Loop that never ends); exit 2.",
)


def _with_timeout(options: Any, timeout: float | None) -> Any:
    """``options`` (one ``SessionOptions`` or a list) with ``timeout`` set."""
    if isinstance(options, list):
        return [dataclasses.replace(one, timeout=timeout) for one in options]
    return dataclasses.replace(options, timeout=timeout)


@click.command()
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of text.")
def inspect(model: str, as_json: bool) -> None:
    """Show an ONNX model's IR version, opsets, inputs, outputs, operators and parameters."""
    from convkit.api import inspect_model
    from convkit.report.tables import render_summary

    summary = inspect_model(model)
    click.echo(json.dumps(summary.to_dict(), indent=2) if as_json else render_summary(summary))


@click.command()
@click.argument("model", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help=".npz, .npy or a test_data_set_N folder.")
@click.option("--output", "-o", required=True, type=click.Path(), help="where to write the outputs (.npz).")
@provider_option
@threads_option
@timeout_option
def run(
    model: str, data: str, output: str, provider: str, threads: int | None, timeout: float | None
) -> None:
    """Run MODEL on the inputs in --data with onnxruntime and save the outputs as .npz."""
    from convkit.api import run_model
    from convkit.core.artifacts import save_npz_atomic
    from convkit.core.outputs import check_outputs

    check_outputs({"-o": output}, [model, data])
    result = run_model(model, data, _with_timeout(session_options(provider, threads), timeout))
    save_npz_atomic(output, result.outputs)
    for note in result.notes:
        click.echo(f"note: {note}")
    shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in result.outputs.items())
    click.echo(f"ran on the {result.provider} provider; wrote {output}: {shapes}")


@click.command()
@click.argument("target", type=click.Path())
@click.option(
    "--source",
    default=None,
    help="verify against this framework model (file or module:factory). A factory, SavedModel or "
    "TorchScript source is a program: convkit runs its code.",
)
@source_options
@tolerance_options
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
@timeout_option
@localize_option
@report_options
@html_option
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
    timeout: float | None,
    localize: str | None,
    report: str | None,
    junit: str | None,
    html: str | None,
) -> None:
    """Check that an ONNX model computes what it should.

    TARGET is a test-case folder (model.onnx + test_data_set_N/) or a model file: without --source, the
    stored test_data_set_N outputs beside it are the reference; with --source, the framework itself is.
    """
    from convkit import api
    from convkit.core.outputs import check_outputs

    check_outputs({"--report": report, "--junit": junit, "--html": html}, [target, source, data, weights])
    with error_report(report), _recorded_errors(html is not None) as recorded:
        tol = tolerance(atol, rtol)
        session = _with_timeout(runtime_configs(providers or provider, optimization, threads), timeout)
        if source is None:
            if inputs or data or framework or weights:
                raise click.UsageError("--input, --data, --framework and --weights need --source")
            result = api.verify_testcase(target, tolerance=tol, options=session, localize=localize)
        else:
            from convkit.core.inputs import parse_input_spec
            from convkit.frontends import LoadOptions

            result = api.verify_model(
                target,
                source,
                framework=with_backend(framework),
                input_specs=[parse_input_spec(text) for text in inputs],
                data=data,
                load_options=LoadOptions(weights=weights, unsafe_pickle=unsafe_allow_pickle),
                tolerance=tol,
                options=session,
                seed=seed,
                localize=localize,
            )
    if not result.passed and not localize:
        result.notes.append("rerun with --localize to find the first diverging node")
    code = finish_report(result, report, junit)
    if html is not None:
        _write_parity_html(html, result, recorded)
        click.echo(f"wrote {html}")
    sys.exit(code)


@contextlib.contextmanager
def _recorded_errors(enabled: bool) -> Iterator[list[tuple[Any, Any]]]:
    """While the block runs, summarize every element's error of each output comparison verify makes
    (``(comparison, ErrorSummary)``), for the HTML report's plots."""
    recorded: list[tuple[Any, Any]] = []
    if not enabled:
        yield recorded
        return
    from convkit.core.compare import observing_outputs
    from convkit.report.plots import summarize_errors

    def record(comparison: Any, expected: Any, actual: Any) -> None:
        recorded.append((comparison, summarize_errors(expected, actual, comparison.atol, comparison.rtol)))

    with observing_outputs(record):
        yield recorded


def _write_parity_html(path: str, report: Any, recorded: list[tuple[Any, Any]]) -> None:
    """Render ``report`` with the recorded error summaries and its localization's values, and write it."""
    from convkit.diagnose.localize import node_label, node_source
    from convkit.graph.model import load_onnx
    from convkit.report.html import render_parity_html, write_html
    from convkit.report.plots import NodeError

    errors = [next((s for c, s in recorded if c is shown), None) for shown in report.comparisons]
    points = []
    if report.localized_values:
        proto = load_onnx(report.model).proto
        producer = {out: k for k, node in enumerate(proto.graph.node) for out in node.output}
        latest = {c.name: c for c in report.localized_values}
        for c in sorted(latest.values(), key=lambda c: producer.get(c.name, -1)):
            k = producer.get(c.name)
            if k is None:  # a graph input
                points.append(NodeError(-1, c.name, c.name, "input", c.max_abs_diff, c.passed))
                continue
            node = proto.graph.node[k]
            label, source = node_label(proto, k), node_source(node)
            points.append(NodeError(k, c.name, label, node.op_type, c.max_abs_diff, c.passed, source))
    write_html(path, render_parity_html(report, errors, points))


@click.command()
@click.argument("source")
@click.option("--output", "-o", required=True, type=click.Path(), help="the .onnx file to write.")
@source_options
@click.option(
    "--static",
    is_flag=True,
    help="fix every dimension of the --data (or the model's declared) shapes, batch included; by default the "
    "batch and every other dimension the model allows are dynamic. --input dims are used as written.",
)
@click.option("--opset", type=int, default=None, help="ONNX opset (the exporter's default if omitted).")
@click.option("--exporter", default=None, help="force one exporter (torch: dynamo or torchscript).")
@click.option("--no-test-data", is_flag=True, help="do not write test_data_set_0/ for the model.")
@click.option(
    "--force", is_flag=True, help="replace a model or test data that an earlier convkit export did not write."
)
@click.option("--verbose", "-v", is_flag=True, help="show the exporters' own output.")
@tolerance_options
@provider_option
@report_options
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
    force: bool,
    verbose: bool,
    atol: float | None,
    rtol: float | None,
    provider: str,
    report: str | None,
    junit: str | None,
) -> None:
    """Export SOURCE (a model file or path/to/file.py:factory) to ONNX and check it on the example inputs.

    A factory, SavedModel or TorchScript SOURCE is a program: convkit runs its code.

    Writes the model, MODEL.manifest.json and test_data_set_0/ (inputs and the framework's outputs): beside
    a model named model.onnx (the folder is an ONNX test case), else in MODEL.test_data/.

    With --data and no --input, the first dimension is dynamic (batch) and so is every other one the model
    allows (PyTorch names them seq for token ids, else INPUT_dimAXIS); a note says which stayed static, why.
    """
    from convkit.api import export_model
    from convkit.core.inputs import parse_input_spec
    from convkit.core.outputs import check_outputs
    from convkit.frontends import ExportOptions, LoadOptions

    reads = [source, data, weights]
    check_outputs({"-o": output, "--report": report, "--junit": junit}, reads)
    with error_report(report):
        summary = export_model(
            source,
            output,
            framework=with_backend(framework),
            input_specs=[parse_input_spec(text) for text in inputs],
            data=data,
            static=static,
            load_options=LoadOptions(weights=weights, unsafe_pickle=unsafe_allow_pickle, verbose=verbose),
            export_options=ExportOptions(opset=opset, exporter=exporter, verbose=verbose),
            test_data=not no_test_data,
            force=force,
            tolerance=tolerance(atol, rtol),
            options=session_options(provider, None),
            seed=seed,
        )
    specs = "; ".join(spec.describe() for spec in summary.specs)
    click.echo(
        f"exported {summary.framework} model to {summary.model_path} with {summary.export.exporter} "
        f"(opset {summary.export.opset}); inputs: {specs}"
    )
    if summary.test_data_dir:
        click.echo(f"wrote {summary.test_data_dir} and {summary.manifest_path}")
    sys.exit(finish_report(summary.report, report, junit))
