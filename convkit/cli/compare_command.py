"""``convkit compare EXPECTED ACTUAL``: two sets of saved outputs, compared as ``verify`` compares.

The golden-outputs workflow: ``convkit run M.onnx --data D.npz -o golden.npz`` today, ``convkit run ... -o
new.npz`` after a change, then ``convkit compare golden.npz new.npz`` in CI, with verify's tolerances,
reports and exit codes (0 parity holds, 1 it does not, 2 the files do not fit).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from convkit.cli.options import error_report, finish_report, report_options, tolerance, tolerance_options


@click.command()
@click.argument("expected", type=click.Path())
@click.argument("actual", type=click.Path())
@tolerance_options
@report_options
def compare(
    expected: str, actual: str, atol: float | None, rtol: float | None, report: str | None, junit: str | None
) -> None:
    """Compare ACTUAL outputs with EXPECTED ones (.npz, .npy or a test_data_set_N folder's outputs).

    Every array of EXPECTED must be in ACTUAL, by name, with its shape and dtype and within tolerance.
    """
    from convkit.core.compare import ParityReport, compare_outputs
    from convkit.core.outputs import check_outputs

    check_outputs({"--report": report, "--junit": junit}, [expected, actual])
    with error_report(report):
        tol = tolerance(atol, rtol)
        wanted = _outputs(expected)
        got = _outputs(actual)
        result = ParityReport(model=actual, reference=expected, provider="-", atol=atol, rtol=rtol)
        result.comparisons = compare_outputs(wanted, got, tol, data_set="outputs")
        extra = sorted(set(got) - set(wanted))
        if extra:
            result.notes.append(f"{actual} also holds {', '.join(extra)}, which {expected} does not")
    sys.exit(finish_report(result, report, junit))


def _outputs(path: str) -> dict[str, Any]:
    """Named arrays from an ``.npz``, a lone ``.npy`` (named ``output``) or a ``test_data_set_N`` folder's
    ``output_N.pb`` files."""
    from pathlib import Path

    from convkit.core.artifacts import load_arrays, read_test_data_set
    from convkit.errors import DataError

    if Path(path).is_dir():
        outputs = dict(read_test_data_set(path)[1])
        if not outputs:
            raise DataError(
                f"{path} holds no output_N.pb files", "give the data set the outputs were saved in"
            )
        return outputs
    return dict(load_arrays(path, ["output"]))
