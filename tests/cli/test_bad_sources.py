"""A user's factory or model module that fails is the user's error: exit 2, one line naming what it raised
and where in their file, no traceback, no file written; never convkit's exit 3, nor the factory's own code."""

from __future__ import annotations

import pytest
from conftest import run_convkit

FACTORIES = {
    "raises": (
        "def make():\n    raise RuntimeError('bad config: hidden_size')\n",
        "RuntimeError: bad config",
        2,
    ),
    "recursion": ("def make():\n    return make()\n", "RecursionError", 2),
    "memory": ("def make():\n    raise MemoryError('2 TB for the embedding')\n", "MemoryError", 2),
    "base_exception": (
        "class Stop(BaseException):\n    pass\ndef make():\n    raise Stop('odd')\n",
        "Stop: odd",
        4,
    ),
    "exits_3": ("import sys\ndef make():\n    sys.exit(3)\n", "exited (sys.exit(3))", None),
    "exits_0": ("import sys\ndef make():\n    sys.exit(0)\n", "exited (sys.exit(0))", None),
    "returns_none": ("def make():\n    pass\n", "returned None", None),
    "import_fails": ("import sys\nraise ValueError('at import')\ndef make():\n    pass\n", "importing", 2),
}


@pytest.mark.parametrize("case", sorted(FACTORIES))
def test_a_failing_factory_is_a_user_error_with_its_line(tmp_path, case):
    code, says, line = FACTORIES[case]
    source = tmp_path / "model_def.py"
    source.write_text(code)
    target = tmp_path / "out.onnx"
    done = run_convkit("export", f"{source}:make", "--input", "x:batch,4", "-o", str(target), "-f", "torch")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: ") and says in lines[0], lines[0]
    if line is not None:
        assert f"(model_def.py:{line})" in lines[0], lines[0]
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["model_def.py"]


def test_a_factory_that_needs_arguments_says_so(tmp_path):
    source = tmp_path / "model_def.py"
    source.write_text("def make(width):\n    return width\n")
    done = run_convkit("export", f"{source}:make", "--input", "x:batch,4", "-o", str(tmp_path / "o.onnx"))
    assert done.returncode == 2
    assert "could not be called without arguments" in done.stderr
