"""Arguments that would give a wrong answer are refused: a tolerance that is not a finite number >= 0 (nan
passes every difference), an opset no exporter can write (some wrote their default instead), a worker timeout
a timer cannot wait."""

from __future__ import annotations

import pytest
from conftest import FIXTURES, run_convkit

from convkit.errors import ConvkitError
from convkit.frontends._worker.client import TIMEOUT_VARIABLE, default_timeout


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
@pytest.mark.parametrize("option", ["--atol", "--rtol"])
def test_a_tolerance_that_is_not_a_finite_number_is_refused(cnn_case, option, value):
    done = run_convkit("verify", str(cnn_case), option, value)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "finite number >= 0" in done.stderr and "PASS" not in done.stdout


@pytest.mark.parametrize("opset", ["0", "-1", "1", "999"])
def test_an_opset_outside_what_onnx_defines_is_refused_before_exporting(tmp_path, opset):
    target = tmp_path / "m.onnx"
    done = run_convkit(
        "export",
        f"{FIXTURES / 'models' / 'torch_models.py'}:reference_cnn",
        "-f",
        "torch",
        "--input",
        "x:batch,1,28,28",
        "--opset",
        opset,
        "-o",
        str(target),
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"opset {opset} is outside what ONNX defines here (7 to" in done.stderr
    assert not target.exists()


@pytest.mark.parametrize("text", ["inf", "nan", "1e300", "0", "-5", "soon"])
def test_a_worker_timeout_a_timer_cannot_wait_is_refused(monkeypatch, text):
    monkeypatch.setenv(TIMEOUT_VARIABLE, text)
    with pytest.raises(ConvkitError, match=f"{TIMEOUT_VARIABLE}=.* is not a number of seconds"):
        default_timeout(300)
    monkeypatch.setenv(TIMEOUT_VARIABLE, "1200")
    assert default_timeout(300) == 1200
