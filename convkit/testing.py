"""Parity checks for users' own test suites.

``assert_parity`` is ``convkit verify`` as an assertion: it returns the ``ParityReport`` when parity holds and
raises ``ParityAssertionError`` (an ``AssertionError`` carrying the report) when it does not, so pytest,
unittest and plain ``assert``-style CI scripts all understand it. The pytest plugin
(``convkit.pytest_plugin``, registered under the ``pytest11`` entry point) exposes it as the
``convkit_parity`` fixture.

Nothing heavy is imported here: the frameworks load only when a check needs them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.compare import ParityReport, Tolerance
from convkit.core.runtime import SessionOptions

__all__ = ["ParityAssertionError", "assert_parity"]

# Where every report ``assert_parity`` makes also goes (the pytest plugin's ``--convkit-reports``).
_report_sink: Callable[[ParityReport], None] | None = None


@contextlib.contextmanager
def _reports_to(sink: Callable[[ParityReport], None]) -> Iterator[None]:
    """Inside the block, hand every report ``assert_parity`` makes, passing or failing, to ``sink``.

    NOTE: why a sink here rather than in the fixture: the README's own example calls ``assert_parity``
    directly; a report written only through the fixture missed exactly those calls.
    """
    global _report_sink
    previous, _report_sink = _report_sink, sink
    try:
        yield
    finally:
        _report_sink = previous


class ParityAssertionError(AssertionError):
    """Parity does not hold. ``report`` is the full ``ParityReport`` (``report.to_dict()`` for JSON)."""

    def __init__(self, report: ParityReport) -> None:
        from convkit.report.text import render_text

        super().__init__(render_text(report))
        self.report = report


def assert_parity(
    model: str | os.PathLike[str],
    source: Any = None,
    *,
    framework: str | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    providers: Sequence[str] = ("auto",),
    localize: str | None = None,
) -> ParityReport:
    """Check that an ONNX model computes what its reference computes; raise when it does not.

    Args:
        model: an ONNX file, or a test-case folder (``model.onnx`` + ``test_data_set_N/``) when ``source`` is
            None, in which case the stored outputs are the reference.
        source: the framework model: a source string as on the command line (``path/to/file.py:factory``,
            ``pkg.module:factory``, a ``.pt2``/``.keras`` file) or the model object itself (an
            ``nn.Module``, a ``keras.Model``).
        framework: the front end (``torch``, ``tensorflow``); inferred from the source when omitted.
        inputs: the inputs to check on (names as the ONNX inputs). Without them, seeded random inputs check
            every symbolic dimension at two sizes.
        atol: absolute tolerance; None uses the per-dtype default (1e-5 for float32).
        rtol: relative tolerance; None uses the per-dtype default (1e-4 for float32).
        providers: execution providers to check (``cpu``, ``cuda``, ``auto``), all in one report.
        localize: on failure, find the first diverging node against this oracle (``auto``, ``reference``,
            ``unoptimized``, ``framework`` or a reference ONNX path); the report carries it.

    Returns:
        The report, when every output of every data set is within tolerance.

    Raises:
        ParityAssertionError: some output differs; the message is the report's text table and verdict.
        convkit.errors.ConvkitError: the inputs to the check are wrong (missing file, names that do not match,
            an unavailable provider); these are not parity failures.
    """
    # NOTE: why: pytest then shows the user's line that called this, not this function's source
    __tracebackhide__ = True
    from convkit import api

    tolerance = Tolerance(atol=atol, rtol=rtol)
    runtimes = [SessionOptions(provider=p) for p in providers]
    if source is None:
        if inputs is not None:
            raise TypeError("inputs need a source to compute the expected outputs")
        report = api.verify_testcase(model, tolerance=tolerance, options=runtimes, localize=localize)
    else:
        report = _verify_against_source(model, source, framework, inputs, tolerance, runtimes, localize)
    if _report_sink is not None:
        _report_sink(report)
    if not report.passed:
        raise ParityAssertionError(report)
    return report


def _verify_against_source(
    model_path: str | os.PathLike[str],
    source: Any,
    framework: str | None,
    inputs: Mapping[str, np.ndarray] | None,
    tolerance: Tolerance,
    runtimes: list[SessionOptions],
    localize: str | None,
) -> ParityReport:
    from convkit import api
    from convkit.core.inputs import check_names, verification_data_sets
    from convkit.frontends import LoadOptions, framework_of, get_frontend, resolve_source
    from convkit.graph.model import load_onnx

    model = load_onnx(model_path)
    if isinstance(source, str | Path):
        frontend, preloaded = resolve_source(str(source), framework)
        label = str(source)
    else:
        name = framework or framework_of(source)
        if name is None:
            raise TypeError(
                f"cannot tell which framework a {type(source).__name__} belongs to; pass framework="
            )
        frontend, preloaded, label = get_frontend(name), source, f"<{type(source).__name__} object>"
    native = frontend.load(label, LoadOptions(), preloaded)
    if inputs is not None:
        check_names(list(inputs), model.input_names, "the inputs")
        data_sets = [("inputs", dict(inputs))]
    else:
        probe = api.open_session(model)
        data_sets = verification_data_sets(api.specs_from_session(probe.inputs))
    return api.verify_native(
        model, frontend, native, data_sets=data_sets, tolerance=tolerance, options=runtimes, localize=localize
    )
