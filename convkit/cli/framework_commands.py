"""The commands about the frameworks themselves: ``train``, ``matrix``, ``demo``, ``doctor`` and ``env``."""

from __future__ import annotations

import json
import sys

import click

from convkit.cli.options import html_option, provider_option, session_options, tolerance, tolerance_options
from convkit.errors import EXIT_OK, EXIT_PARITY_FAILED
from convkit.frontends import FRONTENDS


@click.command()
@click.option("--framework", "-f", required=True, help=f"whose training loop: {', '.join(FRONTENDS)}.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(), help="canonical weights to write (.npz).")
def train(framework: str, epochs: int, seed: int, output: str) -> None:
    """Train the reference CNN on the bundled digits with FRAMEWORK's own training loop.

    Saves canonical weights that every framework loads (convkit matrix --weights OUTPUT).
    """
    from convkit.core.outputs import check_outputs
    from convkit.progress import step
    from convkit.reference.training import train as train_reference

    check_outputs({"-o": output}, [])

    def advance(epoch: int, total: int, metrics: dict[str, float]) -> None:
        scores = " ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        step(f"training ({framework}): epoch {epoch}/{total} {scores}")

    step(f"training ({framework})")
    result = train_reference(framework, output, epochs, seed, advance)
    click.echo(
        f"{result.framework}: {result.epochs} epochs in {result.seconds:.1f} s, "
        f"test accuracy {result.test_accuracy:.4f}; wrote {output}"
    )


@click.command()
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
@tolerance_options
@click.option("--json", "json_path", type=click.Path(), default=None, help="write the matrix as JSON.")
@click.option("--junit", type=click.Path(), default=None, help="write a JUnit XML report.")
@html_option
def matrix(
    frameworks: str | None,
    weights: str | None,
    out_dir: str,
    samples: int,
    atol: float | None,
    rtol: float | None,
    json_path: str | None,
    junit: str | None,
    html: str | None,
) -> None:
    """The reference CNN in every framework: export, verify each against itself, compare all pairs."""
    from convkit.core.artifacts import write_text_atomic
    from convkit.core.outputs import check_outputs
    from convkit.reference.matrix import run_matrix
    from convkit.report.junit import matrix_junit_xml
    from convkit.report.tables import render_matrix

    outputs = {"--json": json_path, "--junit": junit, "--html": html}
    check_outputs(outputs, [weights], folders={"--out-dir": out_dir})
    from convkit.progress import step

    names = [part.strip() for part in frameworks.split(",") if part.strip()] if frameworks else None
    result = run_matrix(
        names,
        weights,
        out_dir,
        tolerance(atol, rtol),
        session_options("cpu", None),
        samples,
        progress=lambda name: step(f"matrix: {name}"),
    )
    if json_path:
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    if junit:
        write_text_atomic(junit, matrix_junit_xml(result))
    click.echo(render_matrix(result))
    if html is not None:
        from convkit.report.html import render_matrix_html, write_html

        write_html(html, render_matrix_html(result))
        click.echo(f"wrote {html}")
    sys.exit(EXIT_OK if result.passed else EXIT_PARITY_FAILED)


@click.command()
@click.option(
    "--out-dir", default="convkit-demo", show_default=True, type=click.Path(), help="where to write exports."
)
@provider_option
def demo(out_dir: str, provider: str) -> None:
    """Export the bundled models, verify them, run them, and print the parity table."""
    from convkit.core.outputs import check_outputs
    from convkit.reference.demo import run_demo

    check_outputs({}, [], folders={"--out-dir": out_dir})
    sys.exit(run_demo(out_dir, session_options(provider, None), click.echo))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of text.")
def doctor(as_json: bool) -> None:
    """Show which framework front ends are ready here (and what installs the others) and the runtime.

    Exit 1 when a framework is installed but fails to load.
    """
    from convkit.diagnose.doctor import diagnose
    from convkit.report.tables import render_doctor

    found = diagnose()
    click.echo(json.dumps(found.to_dict(), indent=2) if as_json else render_doctor(found))
    sys.exit(EXIT_PARITY_FAILED if any(f.status == "blocked" for f in found.frameworks) else EXIT_OK)


@click.group()
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
    from convkit.frontends._worker.envs import LOCKS, list_envs
    from convkit.report.tables import render_env_list

    statuses = list_envs()
    click.echo(
        json.dumps([s.to_dict() for s in statuses], indent=2) if as_json else render_env_list(statuses, LOCKS)
    )
