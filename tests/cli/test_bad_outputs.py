"""An output path that is one of the command's inputs, or is not a file, is refused with one line and exit 2;
every input is byte-identical afterwards and nothing is left behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTCASES, run_convkit, tree_digest


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A test case (model + data sets), a data file and a factory source, all copies the test may lose."""
    shutil.copytree(TESTCASES / "reference_cnn", tmp_path / "case")
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    (tmp_path / "src.py").write_text("def make():\n    raise RuntimeError('never called')\n")
    (tmp_path / "folder").mkdir()
    return tmp_path


def _refused(work: Path, *args: str, says: str) -> None:
    before = tree_digest(work)
    done = run_convkit(*args, cwd=work)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: ") and says in lines[0], lines[0]
    assert tree_digest(work) == before


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "case/model.onnx", "--data", "data.npz", "-o", "case/model.onnx"], "is an input"),
        (["run", "case/model.onnx", "--data", "data.npz", "-o", "./data.npz"], "is an input"),
        (["run", "case/model.onnx", "--data", "data.npz", "-o", "folder"], "is a folder"),
        (["run", "case/model.onnx", "--data", "data.npz", "-o", ""], "is empty"),
        (["run", "case/model.onnx", "--data", "data.npz", "-o", "/dev/null"], "not a regular file"),
        (["run", "case/model.onnx", "--data", "data.npz", "-o", "notes.txt/out.npz"], "notes.txt"),
        (["verify", "case", "--report", "case/model.onnx"], "is an input"),
        (["verify", "case", "--junit", "case/test_data_set_0/input_0.pb"], "is an input"),
        (["quantize", "case/model.onnx", "-o", "case/model.onnx", "--mode", "dynamic"], "is an input"),
        (["export", "src.py:make", "-o", "out.onnx", "--report", "src.py"], "is an input"),
        (["reduce", "case/model.onnx", "--data", "data.npz", "-o", "notes.txt"], "is not a folder"),
        (["reduce", "case/model.onnx", "--data", "data.npz", "-o", "case"], "holds an input"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_an_output_that_would_destroy_an_input_is_refused(work, args, says):
    _refused(work, *args, says=says)


def test_replacing_an_unrelated_output_stays_allowed(work):
    (work / "old.npz").write_bytes(b"yesterday's outputs")
    done = run_convkit("run", "case/model.onnx", "--data", "data.npz", "-o", "old.npz", cwd=work)
    assert done.returncode == 0, done.stderr
    assert set(np.load(work / "old.npz")) == {"probs"}
