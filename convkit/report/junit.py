"""JUnit XML for CI: one writer (``junit_xml``), fed the test cases of a parity report (``convkit verify``,
``convkit export``) or of the framework matrix (``convkit matrix``)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from convkit import __version__
from convkit.progress import command_seconds
from convkit.report.text import format_number, tolerance_text

if TYPE_CHECKING:
    from convkit.core.compare import ParityReport
    from convkit.reference.matrix import MatrixReport

# NOTE: why two orders: the verify and matrix files each kept the attribute order they have always had, so
# that a file written before this writer existed and one written now are the same bytes.
VERIFY_COUNT_ORDER = ("tests", "failures", "errors", "skipped")
MATRIX_COUNT_ORDER = ("tests", "failures", "skipped", "errors")


@dataclass
class JUnitFailure:
    """A ``<failure>``: its message, its type, and the detail it holds (none when ``text`` is ``None``)."""

    message: str
    type: str
    text: str | None = None


@dataclass
class JUnitCase:
    """A ``<testcase>``: failed when ``failure`` is set, skipped when ``skipped`` (the reason) is."""

    classname: str
    name: str
    failure: JUnitFailure | None = None
    skipped: str | None = None
    system_out: str | None = None
    time: float | None = None
    """Seconds this case took; ``None``: an equal share of the suite's time (see ``junit_xml``)."""


def junit_xml(
    suite_name: str,
    cases: Sequence[JUnitCase],
    *,
    properties: Sequence[tuple[str, str]] | None = None,
    system_out: str | None = None,
    count_order: Sequence[str] = VERIFY_COUNT_ORDER,
    seconds: float | None = None,
) -> str:
    """One ``<testsuite>`` holding ``cases``, its counts computed from them.

    Args:
        suite_name: the suite's name (``convkit.verify``, ``convkit.matrix``).
        cases: the test cases, in order.
        properties: ``<property>`` name/value pairs; no ``<properties>`` element when ``None``.
        system_out: the suite's own ``<system-out>`` text, after the cases; none when ``None``.
        count_order: the order of the ``tests``, ``failures``, ``errors`` and ``skipped`` attributes.
        seconds: the suite's wall time; the running command's so far when ``None`` (0 outside a command).

    Returns:
        The XML document, with its declaration and a final newline.
    """
    counts = {
        "tests": len(cases),
        "failures": sum(case.failure is not None for case in cases),
        "errors": 0,
        "skipped": sum(case.skipped is not None for case in cases),
    }
    if seconds is None:
        seconds = command_seconds() or 0.0
    # NOTE: why an equal share for a case without its own time: one onnxruntime run computes every output
    # of a data set at once, so no output has a time of its own; shares keep the cases adding up to the
    # suite's real time, which CI shows, where time="0" said the check cost nothing
    untimed = [case for case in cases if case.time is None]
    timed = sum(case.time for case in cases if case.time is not None)
    share = max(seconds - timed, 0.0) / len(untimed) if untimed else 0.0
    suite = ET.Element("testsuite", name=suite_name)
    for key in count_order:
        suite.set(key, str(counts[key]))
    suite.set("time", f"{max(seconds, timed):.3f}")
    if properties is not None:
        props = ET.SubElement(suite, "properties")
        for key, value in properties:
            ET.SubElement(props, "property", name=key, value=value)
    for case in cases:
        spent = share if case.time is None else case.time
        element = ET.SubElement(
            suite, "testcase", classname=case.classname, name=case.name, time=f"{spent:.3f}"
        )
        if case.skipped is not None:
            ET.SubElement(element, "skipped", message=case.skipped)
        if case.failure is not None:
            failure = ET.SubElement(element, "failure", message=case.failure.message, type=case.failure.type)
            failure.text = case.failure.text
        if case.system_out is not None:
            ET.SubElement(element, "system-out").text = case.system_out
    if system_out is not None:
        ET.SubElement(suite, "system-out").text = system_out
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def parity_junit_xml(report: ParityReport, suite_name: str = "convkit.verify") -> str:
    """One testcase per output and data set (and runtime), ``<failure>`` with the reason.

    Args:
        report: the parity report.
        suite_name: the testsuite's name.

    Returns:
        The JUnit XML document.
    """
    classname = os.path.basename(report.model)
    cases = []
    for c in report.comparisons:
        detail = (
            f"max_abs_diff={format_number(c.max_abs_diff)} max_rel_diff={format_number(c.max_rel_diff)} "
            f"min_passing_atol={format_number(c.min_passing_atol)} ({tolerance_text(c)})"
        )
        name = "/".join(part for part in (c.runtime, c.data_set, c.name) if part)
        if c.passed:
            cases.append(JUnitCase(classname, name, system_out=detail))
        else:
            failure = JUnitFailure(c.reason or "values differ", "ParityFailure", detail)
            cases.append(JUnitCase(classname, name, failure=failure))
    properties = [
        ("model", report.model),
        ("reference", report.reference),
        ("provider", report.provider),
        ("convkit_version", __version__),
    ]
    notes = "\n".join(report.notes) if report.notes else None
    return junit_xml(suite_name, cases, properties=properties, system_out=notes)


def matrix_junit_xml(report: MatrixReport) -> str:
    """One testcase per framework (its ONNX against itself) and per pair of frameworks.

    Args:
        report: the matrix's report.

    Returns:
        The JUnit XML document, suite ``convkit.matrix``; unavailable frameworks are skipped cases.
    """
    cases = []
    for r in report.frameworks:
        case = JUnitCase("matrix", f"{r.framework}/native")
        if r.status == "unavailable":
            case.skipped = r.reason or "unavailable"
        elif r.status != "pass":
            case.failure = JUnitFailure(r.reason or r.status, r.status)
        cases.append(case)
    names = list(report.pairwise)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            detail = f"max_abs_diff={report.pairwise[a][b]:.3g}"
            case = JUnitCase("matrix", f"{a}/{b}")
            if f"{a}/{b}" in report.pairwise_failures or f"{b}/{a}" in report.pairwise_failures:
                case.failure = JUnitFailure(f"{a} and {b} disagree: {detail}", "fail")
            else:
                case.system_out = detail
            cases.append(case)
    return junit_xml("convkit.matrix", cases, count_order=MATRIX_COUNT_ORDER)
