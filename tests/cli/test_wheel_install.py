"""convkit as a user gets it from ``pip install``: the wheel built from this checkout, installed into a fresh
virtual environment, run from a folder outside the checkout. It must do what a clone does: ``doctor``,
``env create``, ``train`` and ``demo``.

NOTE: why the pinned packages come from the suite's own .venv (a ``.pth`` line, not a download): torch and
TensorFlow are gigabytes; the wheel itself is installed with ``--no-deps``, and what is tested is that the
package carries its own files (lock files, digits, weights, test cases) and finds its environments.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")


def _run(
    command: list[str], cwd: Path, env: dict[str, str], timeout: float = 900
) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(the installed ``convkit`` command, a working folder outside the checkout, the environment)."""
    base = tmp_path_factory.mktemp("wheel")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CONVKIT_", "PYTHON"))}
    env["HOME"] = str(base / "home")  # environments go to the user's data folder under it
    env.pop("XDG_DATA_HOME", None)
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(base),
            str(ROOT),
        ],
        base,
        env,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = base.glob("convkit-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "_convkit_test_pinned.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        base,
        env,
    )
    assert done.returncode == 0, done.stderr
    work = base / "elsewhere"
    work.mkdir()
    return venv / "bin" / "convkit", work, env


def test_the_wheel_carries_its_data_and_runs_outside_the_checkout(installed):
    convkit, work, env = installed
    where = _run([str(convkit.parent / "python"), "-c", "import convkit; print(convkit.__file__)"], work, env)
    assert "site-packages" in where.stdout and str(ROOT) not in where.stdout
    doctor = _run([str(convkit), "doctor"], work, env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    rows = {line.split()[0]: line for line in doctor.stdout.splitlines() if line.split()}
    for name in ("paddle", "mxnet", "chainer", "caffe", "theano"):
        assert "not installed" in rows[name] and f"convkit env create {name}" in rows[name], rows[name]
    assert "ready" in rows["torch"]

    created = _run([str(convkit), "env", "create", "caffe"], work, env)
    assert created.returncode == 0, created.stdout + created.stderr
    assert (Path(env["HOME"]) / ".local" / "share" / "convkit" / "envs" / "caffe").is_dir()
    doctor = _run([str(convkit), "doctor"], work, env)
    rows = {line.split()[0]: line for line in doctor.stdout.splitlines() if line.split()}
    assert doctor.returncode == 0 and " ready " in rows["caffe"], doctor.stdout

    trained = _run([str(convkit), "train", "--framework", "torch", "--epochs", "1", "-o", "w.npz"], work, env)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "test accuracy" in trained.stdout and (work / "w.npz").is_file()

    demo = _run([str(convkit), "demo"], work, env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "verify reference_cnn" in demo.stdout and "verify caffe reference_cnn" in demo.stdout
    assert "FAIL" not in demo.stdout
    assert (work / "convkit-demo" / "torch_reference_cnn" / "model.onnx").is_file()
