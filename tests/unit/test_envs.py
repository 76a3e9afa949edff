"""Framework environments (``convkit.frontends._worker.envs``): the stamp, the states, and create's
promises (idempotent,
atomic, a clear error), with lock files of the test's own so that nothing here installs a framework."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import run_convkit

from convkit.errors import FrameworkUnavailableError
from convkit.frontends._worker import envs
from convkit.report.tables import render_env_list


@pytest.fixture
def locks(tmp_path, monkeypatch):
    """An empty locks folder and an empty environments folder, in place of the repository's."""
    folder = tmp_path / "locks"
    folder.mkdir()
    monkeypatch.setattr(envs, "LOCKS", folder)
    monkeypatch.setenv(envs.ENVS_VARIABLE, str(tmp_path / "envs"))
    return folder


def _fake_env(name: str, lock: Path, stamp: dict | None) -> Path:
    """An environment folder as create leaves it: the interpreter, and the stamp (unless ``None``)."""
    folder = envs.envs_root() / name
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").symlink_to(sys.executable)
    if stamp is not None:
        (folder / envs.STAMP_NAME).write_text(json.dumps(stamp))
    return folder


def test_the_stamp_holds_the_locks_sha256_and_the_python_version(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text("numpy==2.4.6\n")
    first = envs.wanted_stamp(lock, "3.11.7")
    assert first == envs.wanted_stamp(lock, "3.11.7")
    assert len(first["lock_sha256"]) == 64 and first["python"] == "3.11.7"
    lock.write_text("numpy==2.4.5\n")
    assert envs.wanted_stamp(lock, "3.11.7")["lock_sha256"] != first["lock_sha256"]


def test_stale_reasons_name_what_changed(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text("numpy==2.4.6\n")
    wanted = envs.wanted_stamp(lock, "3.11.7")
    assert envs.stale_reason(dict(wanted), wanted) is None
    assert "never finished" in envs.stale_reason(None, wanted)
    assert "lock file changed" in envs.stale_reason({**wanted, "lock_sha256": "0" * 64}, wanted)
    assert "Python 3.10.1" in envs.stale_reason({**wanted, "python": "3.10.1"}, wanted)


def test_states_missing_ready_stale_and_what_creates_them(locks):
    lock = locks / "demo" / "demo.lock"
    lock.parent.mkdir()
    lock.write_text("# nothing to install\n")
    assert envs.known_envs() == ["demo"]
    status = envs.env_status("demo")
    assert status.state == envs.MISSING
    assert envs.unavailable_reason("demo") == "the demo environment is not created: convkit env create demo"
    with pytest.raises(FrameworkUnavailableError) as caught:
        envs.require_env("demo")
    assert caught.value.hint == "convkit env create demo"

    _fake_env("demo", lock, envs.wanted_stamp(lock))
    assert envs.env_status("demo").state == envs.READY
    assert envs.unavailable_reason("demo") is None
    assert envs.require_env("demo") == envs.envs_root() / "demo" / "bin" / "python"

    lock.write_text("# other pins\n")
    stale = envs.env_status("demo")
    assert stale.state == envs.STALE and "lock file changed" in stale.detail
    assert "stale" in envs.unavailable_reason("demo")
    rendered = render_env_list(envs.list_envs(), envs.LOCKS)
    assert "demo" in rendered and "stale" in rendered and "convkit env create demo" in rendered


def test_an_unfinished_env_is_stale_and_an_unknown_name_is_an_error(locks):
    lock = locks / "demo" / "demo.lock"
    lock.parent.mkdir()
    lock.write_text("# nothing\n")
    _fake_env("demo", lock, stamp=None)
    assert envs.env_status("demo").state == envs.STALE
    with pytest.raises(envs.FrameworkEnvError, match="unknown environment 'nope'") as caught:
        envs.env_status("nope")
    assert "demo" in (caught.value.hint or "")


def test_lock_packages_reads_names_in_order(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text(
        "# c\npaddlepaddle==3.3.1\ntyping_extensions==4.16.0  # why\n\nonnx>=1.16; python_version<'4'\n"
    )
    assert envs.lock_packages(lock) == ["paddlepaddle", "typing-extensions", "onnx"]


def test_lock_stages_split_at_pip_flag_markers(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text(
        "# header\nnumpy==1.23.5\nsetuptools==69.5.1\n# convkit-pip: --no-deps --no-build-isolation\n"
        "chainer==7.8.1  # sdist\n# convkit-pip: --no-deps\n"
    )
    assert envs.lock_stages(lock) == [
        ([], ["numpy==1.23.5", "setuptools==69.5.1"]),
        (["--no-deps", "--no-build-isolation"], ["chainer==7.8.1  # sdist"]),
    ]
    assert envs.lock_packages(lock) == ["numpy", "setuptools", "chainer"]


def test_create_is_idempotent_and_publishes_a_ready_env(locks):
    lock = locks / "demo" / "demo.lock"
    lock.parent.mkdir()
    lock.write_text("# no packages: a bare virtual environment\n")
    lines: list[str] = []
    created = envs.create_env("demo", echo=lines.append)
    assert created.action == "created" and lines
    path = envs.envs_root() / "demo"
    assert path.is_symlink() and os.access(path / "bin" / "python", os.X_OK)
    assert envs.env_status("demo").state == envs.READY
    first_build = path.resolve()

    start = time.perf_counter()
    again = envs.create_env("demo")
    assert again.action == "up to date" and time.perf_counter() - start < 1.0
    assert "up to date" in again.describe()

    # changed pins: a new build replaces the old one, which is removed
    lock.write_text("# no packages, other comment\n")
    assert envs.env_status("demo").state == envs.STALE
    assert envs.create_env("demo").action == "created"
    assert path.resolve() != first_build and not first_build.exists()
    assert sorted(p.name for p in envs.envs_root().iterdir() if p.name.startswith(".demo-")) == [
        path.resolve().name
    ]


def test_a_failed_create_leaves_nothing_and_quotes_pip(locks):
    (locks / "bad").mkdir()
    (locks / "bad" / "bad.lock").write_text("convkit-no-such-package==0.0.1\n")
    with pytest.raises(envs.FrameworkEnvError) as caught:
        envs.create_env("bad")
    assert "pip install" in caught.value.message
    assert "convkit-no-such-package" in caught.value.message
    assert envs.env_status("bad").state == envs.MISSING
    leftovers = [p.name for p in envs.envs_root().iterdir() if p.name != ".lock"]
    assert leftovers == []


def test_env_list_on_the_command_line_names_the_create_command(tmp_path):
    done = run_convkit("env", "list", "--json")
    assert done.returncode == 0, done.stderr
    found = {item["name"]: item for item in json.loads(done.stdout)}
    assert "paddle" in found
    for item in found.values():
        assert item["state"] in ("ready", "missing", "stale")
        assert (item["create"] is None) == (item["state"] == "ready")
    unknown = run_convkit("env", "create", "no-such-env")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: unknown environment 'no-such-env'")
