"""Framework environments: a virtual environment per framework whose pins cannot live beside the core's.

PaddlePaddle pins onnx and protobuf versions the core does not have, and it cannot share a process with
TensorFlow, so it runs in an environment of its own, driven as a subprocess
(``convkit.frontends._worker``). This module creates those environments and says whether they are ready.

- The pins: ``convkit/frontends/<name>/<name>.lock`` (a pip requirements file, every package pinned).
- The place: ``<repo>/.convkit-envs/<name>``, or ``$CONVKIT_ENVS/<name>``.
- ``create_env`` is idempotent: a stamp in the environment holds the lock's sha256 and the Python version;
  when both still match, it returns at once ("up to date").
- ``create_env`` is atomic: the environment is built in a hidden sibling folder
  (``.convkit-envs/.paddle-XXXX``) and published by pointing the symbolic link ``.convkit-envs/paddle`` at
  it in one rename. A failed or interrupted create leaves the previous state as it was.

NOTE: why a link to the build folder rather than renaming the folder itself: a virtual environment records
its own absolute path (script shebangs, ``activate``), so a venv renamed after it was built is subtly
broken. The build folder keeps its name for life; only the link moves.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from convkit.errors import ConvkitError, FrameworkUnavailableError

PACKAGE = Path(__file__).resolve().parents[2]
REPO = PACKAGE.parent
LOCKS = PACKAGE / "frontends"
"""Where the lock files are: ``<LOCKS>/<name>/<name>.lock``, each in its framework's folder."""
ENVS_VARIABLE = "CONVKIT_ENVS"
STAMP_NAME = ".convkit-env-stamp"
PIP_TIMEOUT_S = 1800

READY, MISSING, STALE = "ready", "missing", "stale"


class FrameworkEnvError(ConvkitError):
    """A framework environment is unknown, or creating it failed."""


@dataclass
class EnvStatus:
    """One framework environment on this machine.

    Attributes:
        name: the environment's name (``paddle``), after its lock file.
        state: ``ready``, ``missing`` (not created) or ``stale`` (created from other pins or another Python).
        path: where it lives (``.convkit-envs/paddle``).
        lock: its pins (``convkit/frontends/paddle/paddle.lock``).
        detail: why it is not ready (empty when it is).
    """

    name: str
    state: str
    path: Path
    lock: Path
    detail: str = ""

    @property
    def create_command(self) -> str:
        return f"convkit env create {self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "path": str(self.path),
            "lock": str(self.lock),
            "detail": self.detail,
            "create": None if self.state == READY else self.create_command,
        }


@dataclass
class CreateResult:
    """What ``create_env`` did: ``created`` or ``up to date``, in how many seconds, with which packages."""

    name: str
    path: Path
    action: str
    seconds: float
    packages: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if self.action == "up to date":
            return f"env {self.name}: {self.path} is up to date"
        shown = ", ".join(f"{k} {v}" for k, v in list(self.packages.items())[:3])
        more = f", ... {len(self.packages)} packages" if len(self.packages) > 3 else ""
        pins = f" ({shown}{more})" if shown else ""
        return f"env {self.name}: created {self.path} in {self.seconds:.0f} s{pins}"


# ------------------------------------------------------------------------------------------- locations
def envs_root() -> Path:
    """The folder holding every environment: ``$CONVKIT_ENVS`` when set; ``<repo>/.convkit-envs`` when convkit
    runs from a checkout; else the user's data folder (``~/.local/share/convkit/envs`` on Linux).

    NOTE: why the data folder for an install: site-packages may be read-only or shared between users, and an
    environment must outlive an upgrade of convkit; a checkout keeps its environments beside it, as
    ``scripts/setup.sh`` has always made them.
    """
    override = os.environ.get(ENVS_VARIABLE)
    if override:
        return Path(override).expanduser().absolute()
    if (REPO / "pyproject.toml").is_file() and (REPO / "scripts" / "setup.sh").is_file():
        return REPO / ".convkit-envs"
    import platformdirs

    return platformdirs.user_data_path("convkit") / "envs"


def known_envs() -> list[str]:
    """Names of the environments convkit knows how to create: one per ``frontends/<name>/<name>.lock``."""
    return sorted(path.stem for path in LOCKS.glob("*/*.lock") if path.stem == path.parent.name)


def lock_path(name: str) -> Path:
    """The lock file of environment ``name``.

    Raises:
        FrameworkEnvError: no such environment (the message lists the known ones).
    """
    path = LOCKS / name / f"{name}.lock"
    if not name.isidentifier() or not path.is_file():
        known = ", ".join(known_envs()) or "none"
        raise FrameworkEnvError(f"unknown environment {name!r}", f"known environments: {known}")
    return path


def env_path(name: str) -> Path:
    """Where environment ``name`` lives (it may not exist)."""
    return envs_root() / name


def env_python(name: str) -> Path:
    """The interpreter of environment ``name`` (it may not exist)."""
    return env_path(name) / "bin" / "python"


# ------------------------------------------------------------------------------------------------ stamp
def wanted_stamp(lock: Path, python_version: str | None = None) -> dict[str, str]:
    """What an environment built from ``lock`` with this Python records: the lock's sha256 and the version.

    NOTE: why the Python version too: a venv links to its base interpreter; after that interpreter changes,
    compiled wheels and the link itself may no longer fit (as scripts/setup.sh does for .venv).
    """
    return {
        "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest(),
        "python": python_version or platform.python_version(),
    }


def read_stamp(folder: Path) -> dict[str, Any] | None:
    """The stamp of the environment at ``folder``, or ``None`` when there is none (never built, or a build
    that did not finish)."""
    try:
        found = json.loads((folder / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def stale_reason(stamp: dict[str, Any] | None, wanted: dict[str, str]) -> str | None:
    """Why an environment with ``stamp`` does not match ``wanted`` (``None`` when it matches)."""
    if stamp is None:
        return "it was never finished (no stamp)"
    if stamp.get("lock_sha256") != wanted["lock_sha256"]:
        return "its lock file changed since it was created"
    if stamp.get("python") != wanted["python"]:
        return f"it was created with Python {stamp.get('python')}, convkit runs on {wanted['python']}"
    return None


def env_status(name: str) -> EnvStatus:
    """Whether environment ``name`` is ready, missing or stale.

    Raises:
        FrameworkEnvError: no such environment.
    """
    lock = lock_path(name)
    path = env_path(name)
    if not path.exists():
        return EnvStatus(name, MISSING, path, lock, "not created")
    if not os.access(path / "bin" / "python", os.X_OK):
        return EnvStatus(name, STALE, path, lock, "its interpreter is missing or broken")
    reason = stale_reason(read_stamp(path), wanted_stamp(lock))
    if reason is not None:
        return EnvStatus(name, STALE, path, lock, reason)
    return EnvStatus(name, READY, path, lock)


def list_envs() -> list[EnvStatus]:
    """Every known environment's status."""
    return [env_status(name) for name in known_envs()]


def unavailable_reason(name: str) -> str | None:
    """``None`` when environment ``name`` is ready, else one line saying why not and what creates it:
    ``the paddle environment is not created: convkit env create paddle``."""
    status = env_status(name)
    if status.state == MISSING:
        return f"the {name} environment is not created: {status.create_command}"
    if status.state == STALE:
        return f"the {name} environment is stale ({status.detail}): {status.create_command}"
    return None


def require_env(name: str) -> Path:
    """The interpreter of environment ``name`` when it is ready.

    Raises:
        FrameworkUnavailableError: it is missing or stale; the hint is the command that creates it.
    """
    reason = unavailable_reason(name)
    if reason is not None:
        raise FrameworkUnavailableError(reason.rpartition(":")[0], f"convkit env create {name}")
    return env_python(name)


def env_packages(name: str) -> dict[str, str]:
    """Installed distributions of environment ``name`` by lower-case name (read from its metadata, without
    starting its interpreter)."""
    import importlib.metadata

    found: dict[str, str] = {}
    for site in sorted(env_path(name).glob("lib/python*/site-packages")):
        for dist in importlib.metadata.distributions(path=[str(site)]):
            dist_name = dist.metadata["Name"]
            if dist_name:
                found[canonical_package(dist_name)] = dist.version
    return found


def canonical_package(name: str) -> str:
    """A distribution name as pip compares them: ``typing_extensions`` -> ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ----------------------------------------------------------------------------------------------- create
@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Hold ``root/.lock`` so that two creates never build or publish at once."""
    if root.exists() and not root.is_dir():
        raise FrameworkEnvError(
            f"the environments folder {root} is a file", f"point ${ENVS_VARIABLE} at a folder, or unset it"
        )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and "is ignored: it is" not in line]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]


def _run_step(command: list[str], what: str, name: str) -> None:
    """Run one build step quietly; a failure is a ``FrameworkEnvError`` quoting its last error line."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise FrameworkEnvError(
            f"creating the {name} environment failed: {what} took longer than {PIP_TIMEOUT_S} s"
        ) from exc
    if done.returncode != 0:
        raise FrameworkEnvError(
            f"creating the {name} environment failed: {what}: {_last_line(done.stderr + done.stdout)}",
            f"check {lock_path(name)} and the package index; nothing was left behind",
        )


def _publish(root: Path, name: str, build: Path) -> None:
    """Point ``root/name`` at ``build`` in one rename, then remove what it pointed at before."""
    link = root / name
    previous = link.resolve() if link.is_symlink() else None
    temporary = root / f".{name}.link-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    temporary.symlink_to(build.name)
    if link.exists() and not link.is_symlink():
        # an environment made by hand (or by an older convkit) in place: move it aside first
        aside = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=root))
        link.rename(aside / name)
        previous = aside
    os.replace(temporary, link)
    if previous is not None and previous != build.resolve():
        shutil.rmtree(previous, ignore_errors=True)


def _remove_orphans(root: Path, name: str) -> None:
    """Remove build folders of ``name`` that nothing points at (left by a create that was killed)."""
    current = (root / name).resolve() if (root / name).is_symlink() else None
    for folder in root.glob(f".{name}-*"):
        if folder.is_dir() and folder.resolve() != current:
            shutil.rmtree(folder, ignore_errors=True)


def create_env(name: str, force: bool = False, echo: Callable[[str], None] | None = None) -> CreateResult:
    """Create environment ``name`` from ``convkit/frontends/<name>/<name>.lock`` unless it is up to date.

    Args:
        name: the environment (``paddle``).
        force: rebuild even when the stamp matches.
        echo: called with progress lines (the CLI prints them on stderr).

    Returns:
        What was done, how long it took, and the installed versions of the lock's packages.

    Raises:
        FrameworkEnvError: unknown environment, or ``venv`` / ``pip`` failed (the message quotes pip's last
            error line). Nothing half-made is left behind.
    """
    lock = lock_path(name)
    root = envs_root()
    start = time.perf_counter()
    say = echo or (lambda _line: None)
    if not force and env_status(name).state == READY:
        return CreateResult(name, env_path(name), "up to date", time.perf_counter() - start)
    with _exclusive(root):
        if not force and env_status(name).state == READY:  # another create finished meanwhile
            return CreateResult(name, env_path(name), "up to date", time.perf_counter() - start)
        _remove_orphans(root, name)
        build = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            build.chmod(0o755)
            say(f"env {name}: creating a virtual environment with Python {platform.python_version()}")
            _run_step([sys.executable, "-m", "venv", "--clear", str(build)], "python -m venv", name)
            say(f"env {name}: installing {lock.relative_to(REPO) if lock.is_relative_to(REPO) else lock}")
            for number, (flags, requirements) in enumerate(lock_stages(lock)):
                staged = build / f".convkit-stage-{number}.txt"
                staged.write_text("\n".join(requirements) + "\n")
                pip = [str(build / "bin" / "python"), "-m", "pip", "install", "--quiet"]
                _run_step(
                    [*pip, *flags, "-r", str(staged)],
                    f"pip install {' '.join(flags)}".rstrip(),
                    name,
                )
                staged.unlink()
            stamp = {
                **wanted_stamp(lock),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - start, 1),
            }
            (build / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
            _publish(root, name, build)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    installed = env_packages(name)
    packages = {p: installed[p] for p in lock_packages(lock) if p in installed}
    return CreateResult(name, env_path(name), "created", time.perf_counter() - start, packages)


STAGE_MARKER = "# convkit-pip:"


def lock_stages(lock: Path) -> list[tuple[list[str], list[str]]]:
    """A lock file's install stages, in order: ``(pip flags, requirement lines)``.

    A line ``# convkit-pip: --no-deps`` starts a stage installed by its own ``pip install --no-deps -r`` after
    the ones before it; the lines before the first marker form a stage without flags.

    NOTE: why stages: some old frameworks install only with flags a requirements file cannot give one package
    (caffe2onnx with ``--no-deps`` around an uninstallable pin; Chainer's sdist with ``--no-build-isolation``,
    which needs setuptools installed by an earlier stage).
    """
    stages: list[tuple[list[str], list[str]]] = [([], [])]
    for line in lock.read_text().splitlines():
        text = line.strip()
        if text.startswith(STAGE_MARKER):
            stages.append((text[len(STAGE_MARKER) :].split(), []))
        elif text and not text.startswith("#"):
            stages[-1][1].append(text)
    return [(flags, lines) for flags, lines in stages if lines]


def lock_packages(lock: Path) -> list[str]:
    """The package names a lock file pins, in its order (canonical names)."""
    names = []
    for line in lock.read_text().splitlines():
        text = re.split(r"[=<>~!;\[ ]", line.split("#", 1)[0].strip(), maxsplit=1)[0]
        if text and not text.startswith("-"):
            names.append(canonical_package(text))
    return names
