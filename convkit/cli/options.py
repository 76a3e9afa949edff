"""The options several commands share, and the helpers that turn option values into convkit's own types.

Nothing heavy at import: the types are imported inside the helpers that build them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import click

from convkit.errors import EXIT_OK, EXIT_PARITY_FAILED
from convkit.frontends import ALIASES, FRONTENDS

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


def _require_matplotlib(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse ``--html`` where matplotlib is missing while the arguments are read, before any long work."""
    if value is not None:
        from convkit.report.html import require_matplotlib

        require_matplotlib()
    return value


html_option = click.option(
    "--html",
    "html",
    type=click.Path(),
    default=None,
    metavar="REPORT.html",
    callback=_require_matplotlib,
    help="write a self-contained HTML report with plots (needs matplotlib: pip install 'convkit[html]').",
)


def tolerance_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--rtol`` and ``--atol`` (see ``tolerance``)."""
    func = click.option(
        "--rtol", type=float, default=None, help="relative tolerance (default 1e-4 for fp32)."
    )(func)
    return click.option(
        "--atol",
        type=float,
        default=None,
        help="absolute tolerance, used as given (fp32 default: 1e-5, or 1e-5 x max|expected| if larger).",
    )(func)


def _remember_backend(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta["keras_backend"] = value


def with_backend(framework: str | None) -> str | None:
    """``--framework keras --backend jax`` is the ``keras-jax`` front end (TensorFlow is Keras' default)."""
    backend = click.get_current_context().meta.get("keras_backend")
    if backend is None or backend == "tensorflow":
        return framework
    if framework is not None and framework.lower() not in ("keras", "tensorflow", "tf", f"keras-{backend}"):
        raise click.UsageError(f"--backend applies to Keras models, not to --framework {framework}")
    return f"keras-{backend}"


def source_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """What loads a framework model and its inputs: ``--framework``, ``--backend``, ``--input``, ``--data``,
    ``--weights``, ``--unsafe-allow-pickle`` and ``--seed``."""
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
            help="allow files that run code when loaded (whole pickled models, .pt2 archives carrying "
            "pickles or code, Keras Lambda layers). Only for files you trust.",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="seed of the random inputs."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def report_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--report`` (JSON) and ``--junit`` (JUnit XML): where ``finish_report`` writes the report files."""
    func = click.option("--junit", type=click.Path(), default=None, help="write a JUnit XML report.")(func)
    return click.option("--report", type=click.Path(), default=None, help="write the JSON report.")(func)


def session_options(provider: str, threads: int | None) -> Any:
    """The ``SessionOptions`` for ``--provider`` and ``--threads``."""
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


def runtime_configs(providers: str, optimization: str, threads: int | None) -> list[Any]:
    """Every provider x optimization level combination asked for."""
    from convkit.core.runtime import OPTIMIZATION_LEVELS, PROVIDER_CHOICES, SessionOptions

    return [
        SessionOptions(provider=p, threads=threads, optimization=level)
        for p in _split_choices(providers, PROVIDER_CHOICES, "--providers")
        for level in _split_choices(optimization, OPTIMIZATION_LEVELS, "--optimization")
    ]


def tolerance(atol: float | None, rtol: float | None) -> Any:
    """The ``Tolerance`` for ``--atol`` and ``--rtol``; a negative one is a usage error."""
    from convkit.core.compare import Tolerance

    for name, value in (("--atol", atol), ("--rtol", rtol)):
        # NOTE: why finite: every comparison with nan is false, so --atol nan would pass any difference
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise click.BadParameter(f"{name} must be a finite number >= 0, not {value}")
    return Tolerance(atol=atol, rtol=rtol)


@contextlib.contextmanager
def error_report(report_path: str | None) -> Iterator[None]:
    """On a ``ConvkitError`` inside the block, write it to the ``--report`` file too, then let it go on."""
    from convkit.errors import ConvkitError

    try:
        yield
    except ConvkitError as exc:
        from convkit.report.files import write_error_report

        write_error_report(exc, report_path)
        raise


def finish_report(report: Any, report_path: str | None, junit_path: str | None, quiet: bool = False) -> int:
    """Write the report files, print the report's text (unless ``quiet``) and return the exit code."""
    from convkit.report.files import write_report_files
    from convkit.report.text import render_text

    write_report_files(report, report_path, junit_path)
    if not quiet:
        click.echo(render_text(report))
    return EXIT_OK if report.passed else EXIT_PARITY_FAILED
