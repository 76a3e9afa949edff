"""pytest plugin (entry point ``pytest11``): the ``convkit_parity`` fixture and ``--convkit-reports DIR``.

    def test_exported_model_holds_parity(convkit_parity):
        convkit_parity("build/model.onnx", "models/net.py:make_model", atol=1e-5)

The fixture is ``convkit.testing.assert_parity``; with ``--convkit-reports DIR`` every report a test makes,
through the fixture or a direct ``assert_parity`` call, passing or failing, is also written to
``DIR/<test id>-<n>.json`` for CI to publish.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
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
        help="write every parity report (assert_parity, convkit_parity) as JSON into DIR",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, None]:
    """With ``--convkit-reports``, collect the reports made while ``item`` runs (setup, call, teardown)."""
    folder = item.config.getoption("--convkit-reports")
    if folder is None:
        yield
        return
    from convkit.testing import _reports_to

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid).strip("_")
    written: list[Path] = []

    def write(report: ParityReport) -> None:
        from convkit.report.files import write_report_files

        path = Path(folder) / f"{stem}-{len(written)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_report_files(report, str(path), None)
        written.append(path)

    with _reports_to(write):
        yield


@pytest.fixture
def convkit_parity() -> Callable[..., ParityReport]:
    """``convkit.testing.assert_parity`` (its reports are written under ``--convkit-reports`` too)."""
    from convkit.testing import assert_parity

    return assert_parity
