"""``convkit migrate``: an ONNX model as a trainable PyTorch package, verified against onnxruntime."""

from __future__ import annotations

import sys

import click

from convkit.cli.options import error_report, finish_report, report_options, tolerance, tolerance_options


@click.command()
@click.argument("model", type=click.Path())
@click.option("--to", "to", type=click.Choice(["torch"]), default="torch", show_default=True,
              help="the framework to write.")  # fmt: skip
@click.option("--output", "-o", required=True, type=click.Path(), help="the folder to write (a package).")
@click.option("--force", is_flag=True, help="replace a folder an earlier convkit migrate did not write.")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the random check inputs.")
@tolerance_options
@report_options
def migrate(
    model: str,
    to: str,
    output: str,
    force: bool,
    seed: int,
    atol: float | None,
    rtol: float | None,
    report: str | None,
    junit: str | None,
) -> None:
    """Write MODEL (ONNX) as a PyTorch package in OUTPUT and prove it computes what MODEL does.

    OUTPUT gets model.py (class Model, load()), weights.pt, test_data_set_0/ and report.json. The module is
    checked against onnxruntime at two sizes of every symbolic dimension: exit 1 when they drift apart.
    """
    from convkit.core.outputs import check_outputs
    from convkit.migrate import migrate_model

    check_outputs({"--report": report, "--junit": junit}, [model])
    with error_report(report):
        summary = migrate_model(model, output, to=to, tolerance=tolerance(atol, rtol), seed=seed, force=force)
    layers = ", ".join(summary.modules) or "functional calls only"
    click.echo(f"migrated {model} to {summary.out_dir}/model.py ({layers}); weights in weights.pt")
    sys.exit(finish_report(summary.report, report, junit))
