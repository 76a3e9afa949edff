"""``convkit run -o`` saves outputs; ``convkit compare`` checks two saved sets as ``verify`` does, with the
same tolerances, reports and exit codes: 0 parity holds, 1 it does not, 2 the files cannot be compared."""

from __future__ import annotations

import json

import numpy as np
from conftest import run_convkit


def _golden(cnn_case, tmp_path, name: str) -> str:
    out = tmp_path / name
    done = run_convkit(
        "run", str(cnn_case / "model.onnx"), "--data", str(cnn_case / "test_data_set_1"), "-o", str(out)
    )
    assert done.returncode == 0, done.stderr
    return str(out)


def test_the_same_outputs_twice_hold_parity(cnn_case, tmp_path):
    golden, again = _golden(cnn_case, tmp_path, "golden.npz"), _golden(cnn_case, tmp_path, "again.npz")
    report = tmp_path / "r.json"
    done = run_convkit("compare", golden, again, "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(report.read_text())
    assert found["passed"] is True and [o["name"] for o in found["outputs"]] == ["probs"]


def test_stored_outputs_of_a_test_case_are_a_golden_set(cnn_case, tmp_path):
    golden = _golden(cnn_case, tmp_path, "golden.npz")
    done = run_convkit("compare", str(cnn_case / "test_data_set_1"), golden)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_drifted_output_fails_and_says_by_how_much(cnn_case, tmp_path):
    golden = _golden(cnn_case, tmp_path, "golden.npz")
    drifted = dict(np.load(golden))
    drifted["probs"] = drifted["probs"] + 1e-3
    np.savez(tmp_path / "new.npz", **drifted)
    junit = tmp_path / "r.xml"
    done = run_convkit("compare", golden, str(tmp_path / "new.npz"), "--junit", str(junit))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout and "would pass" in done.stdout
    assert "<failure" in junit.read_text()
    loose = run_convkit("compare", golden, str(tmp_path / "new.npz"), "--atol", "2e-3")
    assert loose.returncode == 0, loose.stdout


def test_a_missing_output_fails_and_files_that_cannot_be_read_are_input_errors(cnn_case, tmp_path):
    golden = _golden(cnn_case, tmp_path, "golden.npz")
    np.savez(tmp_path / "other.npz", logits=np.zeros((3, 10), np.float32))
    missing = run_convkit("compare", golden, str(tmp_path / "other.npz"))
    assert missing.returncode == 1 and "no output named 'probs'" in missing.stdout
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    broken = run_convkit("compare", golden, str(tmp_path / "broken.npz"))
    assert broken.returncode == 2 and broken.stderr.startswith("error: ")
    absent = run_convkit("compare", golden, str(tmp_path / "absent.npz"))
    assert absent.returncode == 2 and "does not exist" in absent.stderr
