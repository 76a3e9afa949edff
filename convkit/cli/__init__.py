"""The ``convkit`` command: parses options, calls ``convkit.api``, renders with ``convkit.report``.

No logic of its own, and no heavy import at module level: ``convkit --help`` starts without torch or
TensorFlow (a test proves it). The commands live by subject in ``model_commands`` (inspect, run, verify,
export), ``tool_commands`` (bench, quantize, reduce) and ``framework_commands`` (train, matrix, demo, doctor,
env), their shared options in ``options``; this module is the group and the exit codes.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import NoReturn

import click

from convkit import __version__
from convkit.cli.compare_command import compare
from convkit.cli.framework_commands import demo, doctor, env, matrix, train
from convkit.cli.migrate_command import migrate
from convkit.cli.model_commands import export, inspect, run, verify
from convkit.cli.tool_commands import bench, quantize, reduce
from convkit.errors import EXIT_USAGE, ConvkitError

EXIT_INTERNAL = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="convkit")
@click.option("--debug", is_flag=True, help="show tracebacks for errors.")
@click.option("--quiet", "-q", is_flag=True, help="no progress on stderr (errors are still shown).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Export models to ONNX, prove they compute the same thing, run them with onnxruntime.

    Exit codes: 0 success / parity holds, 1 parity fails, 2 usage or input error, 3 internal error.
    """
    ctx.obj = {"debug": debug, "quiet": quiet}
    if ctx.invoked_subcommand in PROGRESS_COMMANDS:
        from convkit.progress import reporting

        # NOTE: why here, once: every long command gets the same reporter, closed (its line erased) when
        # the command ends, before main() prints an error
        ctx.with_resource(reporting(quiet))


# The commands that can run long enough to need progress on stderr, and
# ``compare`` for its clock: the JUnit file's times come from it (``convkit.progress.command_seconds``).
PROGRESS_COMMANDS = frozenset(
    {
        "export",
        "verify",
        "compare",
        "bench",
        "quantize",
        "reduce",
        "migrate",
        "train",
        "matrix",
        "demo",
        "doctor",
    }
)


# NOTE: why the commands are plain click commands added here rather than ``@cli.command()`` in their modules:
# the command modules then never import this one, so the package has no import cycle.
for _command in (
    inspect,
    run,
    verify,
    compare,
    export,
    bench,
    quantize,
    reduce,
    migrate,
    train,
    matrix,
    demo,
    doctor,
    env,
):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line and exit 2; bugs exit 3 (tracebacks with --debug).

    Args:
        argv: the arguments after the program's name; ``sys.argv[1:]`` when ``None``.
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    # NOTE: why: users add --debug (or --quiet) at the end of the line they just ran; click knows them only
    # before the command, so they are taken out here and given back in their place
    for flag, names in (("--debug", ("--debug",)), ("--quiet", ("--quiet", "-q"))):
        if any(arg in names for arg in args):
            args = [flag, *(arg for arg in args if arg not in names)]
    try:
        with _sigterm_interrupts():
            cli.main(args=args, prog_name="convkit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        # NOTE: why: click turns Ctrl-C (and SIGTERM, see _sigterm_interrupts) into Abort
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except ConvkitError as exc:
        if debug:
            traceback.print_exc()
        # NOTE: why the stage only past input: "fix your arguments" needs no label; "the exporter failed"
        # (capture) or "onnxruntime failed" (runtime) tells whose move it is
        stage = f" [stage: {exc.stage}]" if exc.stage != "input" else ""
        click.echo(f"error: {exc.message}{stage}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        if exc.filename is None:
            raise_internal(exc, debug)
        # NOTE: why a user error: an OSError naming a file is the machine saying no (a read-only folder, a
        # full disk, a path through a file); the message and the file are what the user needs
        if debug:
            traceback.print_exc()
        click.echo(f"error: cannot use {exc.filename}: {exc.strerror or exc}", err=True)
        click.echo("hint: check the path, its permissions and the free space", err=True)
        sys.exit(EXIT_USAGE)
    except Exception as exc:
        raise_internal(exc, debug)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While a command runs, SIGTERM interrupts it as Ctrl-C does.

    NOTE: why: Python's default SIGTERM ends the process on the spot, skipping the ``finally`` blocks that
    remove staging folders and stop workers; as a KeyboardInterrupt it unwinds them, then exits 130.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def raise_internal(exc: Exception, debug: bool) -> NoReturn:
    """A bug in convkit: one line (the traceback with ``--debug``) and exit 3."""
    if debug:
        traceback.print_exc()
    click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
    click.echo("this is a bug in convkit; rerun with --debug for the traceback and report it", err=True)
    sys.exit(EXIT_INTERNAL)
