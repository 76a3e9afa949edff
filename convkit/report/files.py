"""The report files ``verify`` and ``export`` write: the JSON report and the JUnit XML, each atomically."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from convkit.core.artifacts import write_text_atomic
from convkit.report.junit import parity_junit_xml

if TYPE_CHECKING:
    from convkit.core.compare import ParityReport
    from convkit.errors import ConvkitError


def to_json(report: ParityReport) -> str:
    """The report's JSON document (``ParityReport.to_dict``), indented, with a final newline."""
    return json.dumps(report.to_dict(), indent=2) + "\n"


def write_report_files(report: ParityReport, json_path: str | None, junit_path: str | None) -> None:
    """Write the JSON and/or JUnit files, each atomically.

    Args:
        report: the parity report both files hold.
        json_path: where the JSON report goes; none written when ``None``.
        junit_path: where the JUnit XML goes; none written when ``None``.
    """
    if json_path:
        write_text_atomic(json_path, to_json(report))
    if junit_path:
        write_text_atomic(junit_path, parity_junit_xml(report))


def write_error_report(error: ConvkitError, json_path: str | None) -> None:
    """Write the JSON report of a run that stopped before it could compare: ``passed`` false and the
    error with the stage that failed (``ConvkitError.to_dict``).

    NOTE: why: a CI job reading ``--report`` should find why, not a missing file.
    """
    from convkit import __version__

    if json_path:
        from convkit.core.compare import REPORT_SCHEMA

        document = {
            "schema": REPORT_SCHEMA,
            "convkit_version": __version__,
            "passed": False,
            "error": error.to_dict(),
        }
        write_text_atomic(json_path, json.dumps(document, indent=2) + "\n")
