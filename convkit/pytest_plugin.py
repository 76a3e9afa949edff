"""pytest plugin (entry point ``pytest11``): the ``convkit_parity`` fixture and ``--convkit-reports DIR``.

    def test_exported_model_holds_parity(convkit_parity):
        convkit_parity("build/model.onnx", "models/net.py:make_model", atol=1e-5)

The fixture is ``convkit.testing.assert_parity``; with ``--convkit-reports DIR`` every report it produces,
passing or failing, is also written to ``DIR/<test id>-<n>.json`` for CI to publish.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from convkit.core.compare import ParityReport


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("convkit")
    group.addoption(
        "--convkit-reports",
        metavar="DIR",
        default=None,
        help="write every convkit_parity report as JSON into DIR",
    )


@pytest.fixture
def convkit_parity(request: pytest.FixtureRequest) -> Callable[..., ParityReport]:
    """``convkit.testing.assert_parity``, writing reports when ``--convkit-reports`` is given."""
    from convkit.testing import ParityAssertionError, assert_parity

    folder = request.config.getoption("--convkit-reports")
    if folder is None:
        return assert_parity
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid).strip("_")
    written: list[Path] = []

    def checked(*args: Any, **kwargs: Any) -> ParityReport:
        try:
            report = assert_parity(*args, **kwargs)
        except ParityAssertionError as failure:
            _write(failure.report)
            raise
        _write(report)
        return report

    def _write(report: ParityReport) -> None:
        from convkit.report.files import write_report_files

        path = Path(folder) / f"{stem}-{len(written)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_report_files(report, str(path), None)
        written.append(path)

    return checked
