"""JUnit files carry the real time of the check, per test case and for the suite (CI shows it)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from convkit.report.junit import JUnitCase, junit_xml
from tests.conftest import TESTCASES, run_convkit


def test_verify_records_its_wall_time_in_the_junit_file(tmp_path: Path) -> None:
    junit = tmp_path / "r.xml"
    started = time.monotonic()
    done = run_convkit("verify", str(TESTCASES / "reference_cnn"), "--junit", str(junit), "-q")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    suite = ET.parse(junit).getroot()
    total = float(suite.get("time", "0"))
    assert 0 < total <= took
    cases = [float(case.get("time", "0")) for case in suite.findall("testcase")]
    assert len(cases) == 2 and all(t > 0 for t in cases)
    assert sum(cases) == pytest.approx(total, abs=0.002 * len(cases))


def test_a_case_with_its_own_time_keeps_it_and_the_rest_share_the_remainder() -> None:
    cases = [JUnitCase("m", "a", time=1.5), JUnitCase("m", "b"), JUnitCase("m", "c")]
    suite = ET.fromstring(junit_xml("s", cases, seconds=2.5))
    assert suite.get("time") == "2.500"
    assert [case.get("time") for case in suite.findall("testcase")] == ["1.500", "0.500", "0.500"]
