"""``convkit.testing.assert_parity`` on the framework-free test cases; the pytest plugin as users run it."""

import json
import shutil
import subprocess
import sys
import textwrap

import onnx
import pytest
from onnx import numpy_helper

from convkit.testing import ParityAssertionError, assert_parity

pytest_plugins = ["pytester"]


def _tampered_copy(case, tmp_path):
    target = tmp_path / case.name
    shutil.copytree(case, target)
    proto = onnx.load(target / "model.onnx")
    for tensor in proto.graph.initializer:
        if tensor.name == "conv2.bias":
            value = numpy_helper.to_array(tensor).copy()
            value[3] += 0.5
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    onnx.save(proto, target / "model.onnx")
    return target


def test_holding_parity_returns_the_report(cnn_case):
    report = assert_parity(cnn_case)
    assert report.passed
    assert {c.data_set for c in report.comparisons} == {"test_data_set_0", "test_data_set_1"}


def test_broken_parity_raises_an_assertion_error_carrying_the_report(cnn_case, tmp_path):
    with pytest.raises(AssertionError) as caught:
        assert_parity(_tampered_copy(cnn_case, tmp_path), localize=str(cnn_case / "model.onnx"))
    failure = caught.value
    assert isinstance(failure, ParityAssertionError)
    assert not failure.report.passed
    assert failure.report.localization["first_divergence"]["node"] == "conv2"
    assert "FAIL" in str(failure) and "conv2" in str(failure)


def test_a_loose_tolerance_is_honoured(cnn_case, tmp_path):
    assert assert_parity(_tampered_copy(cnn_case, tmp_path), atol=10.0).passed


def test_inputs_without_a_source_are_refused(cnn_case):
    with pytest.raises(TypeError, match="source"):
        assert_parity(cnn_case, inputs={})


def test_pytest_plugin_fixture_and_reports(cnn_case, tmp_path):
    broken = _tampered_copy(cnn_case, tmp_path / "broken")
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            f"""
            def test_good(convkit_parity):
                assert convkit_parity({str(cnn_case)!r}).passed

            def test_bad(convkit_parity):
                convkit_parity({str(broken)!r})
            """
        )
    )
    reports = tmp_path / "reports"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_user.py",
            f"--convkit-reports={reports}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed" in done.stdout
    assert "ParityAssertionError" in done.stdout
    written = sorted(reports.glob("*.json"))
    assert [p.name for p in written] == ["test_user.py_test_bad-0.json", "test_user.py_test_good-0.json"]
    assert [json.loads(p.read_text())["passed"] for p in written] == [False, True]


def test_a_direct_call_writes_its_report_and_a_failure_shows_the_users_line(pytester, cnn_case, tmp_path):
    broken = _tampered_copy(cnn_case, tmp_path / "broken")
    pytester.makepyfile(
        test_direct=f"""
        from convkit.testing import assert_parity


        def test_good():
            assert_parity({str(cnn_case)!r})


        def test_bad():
            assert_parity({str(broken)!r})  # the user's own line
        """
    )
    reports = tmp_path / "reports"
    result = pytester.runpytest_inprocess(f"--convkit-reports={reports}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    shown = result.stdout.str()
    assert "# the user's own line" in shown and "ParityAssertionError" in shown
    assert "def assert_parity" not in shown and "tolerance = Tolerance(" not in shown
    written = sorted(reports.glob("*.json"))
    assert [p.name for p in written] == ["test_direct.py_test_bad-0.json", "test_direct.py_test_good-0.json"]
    assert [json.loads(p.read_text())["passed"] for p in written] == [False, True]
