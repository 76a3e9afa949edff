"""``convkit doctor``: which front ends are ready here, which are not and what installs them, and the runtime.

Each framework is probed in a fresh interpreter of its own. NOTE: why a subprocess per framework: some
frameworks cannot share a process (PaddlePaddle after TensorFlow ends in a segfault), and a probe that
crashes must become a line in the table, not the end of the command.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from convkit.frontends import FRONTENDS, PLANNED
from convkit.progress import step

PROBE_TIMEOUT_S = 120

# Runs in the child: prints one JSON object for the front end named in argv[1].
_PROBE = """
import json, sys
from convkit.frontends import install_hint, load_frontend_class
frontend = load_frontend_class(sys.argv[1])
reason = frontend.is_available()
versions = {} if reason else frontend.versions()
print(json.dumps({"reason": reason, "versions": versions, "install": install_hint(frontend)}))
"""


@dataclass
class FrameworkState:
    """One front end on this machine."""

    framework: str
    status: str
    """``ready``, ``not installed``, ``blocked`` (installed, but it fails to load) or ``planned`` (no front
    end yet: ``reason`` says what blocks it)."""
    versions: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    install: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Diagnosis:
    python: str
    platform: str
    convkit: str
    onnx: str
    onnxruntime: str
    providers: list[str]
    cpus: int
    frameworks: list[FrameworkState]

    @property
    def ready(self) -> list[str]:
        return [f.framework for f in self.frameworks if f.status == "ready"]

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.__dict__.items() if k != "frameworks"},
            "frameworks": [f.to_dict() for f in self.frameworks],
        }


def _state(name: str, done: subprocess.CompletedProcess[str] | None) -> FrameworkState:
    if done is None:
        return FrameworkState(name, "blocked", reason=f"the probe took longer than {PROBE_TIMEOUT_S} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return FrameworkState(name, "blocked", reason=f"the probe exited with code {done.returncode}: {tail}")
    found = json.loads(lines[-1])
    install = found["install"]
    if found["reason"] is None:
        return FrameworkState(name, "ready", versions=found["versions"])
    # NOTE: why "not created" counts as not installed: an isolated front end's framework is installed by
    # creating its environment (convkit env create NAME), which the install command says
    missing = any(
        text in found["reason"] for text in ("No module named", "ModuleNotFoundError", "not created", "stale")
    )
    return FrameworkState(
        name, "not installed" if missing else "blocked", reason=found["reason"], install=install
    )


def probe_frameworks(names: list[str] | None = None) -> list[FrameworkState]:
    """Probe each front end in its own interpreter, all at once; the result follows ``names``' order."""
    wanted = names or [*FRONTENDS, *PLANNED]
    names = [name for name in wanted if name in FRONTENDS]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="3")
    running = {
        name: subprocess.Popen(
            [sys.executable, "-c", _PROBE, name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in names
    }
    states = []
    for index, (name, process) in enumerate(running.items(), 1):
        step(f"probing {name} in its own interpreter ({index}/{len(running)})")
        try:
            stdout, stderr = process.communicate(timeout=PROBE_TIMEOUT_S)
            done: subprocess.CompletedProcess[str] | None = subprocess.CompletedProcess(
                process.args, process.returncode, stdout, stderr
            )
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            done = None
        states.append(_state(name, done))
    # NOTE: why planned rows too: the founding document names these frameworks; doctor says what blocks
    # each rather than leaving it out (they do not count as a broken install: the exit code ignores them).
    states += [
        FrameworkState(name, "planned", reason=reason) for name, reason in PLANNED.items() if name in wanted
    ]
    return states


def diagnose(names: list[str] | None = None) -> Diagnosis:
    """The runtime (onnx, onnxruntime and its execution providers) and every front end's state."""
    step("loading onnx and onnxruntime")
    import onnx
    import onnxruntime as ort

    from convkit import __version__
    from convkit.core.runtime import usable_cpu_count

    return Diagnosis(
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        convkit=__version__,
        onnx=onnx.__version__,
        onnxruntime=ort.__version__,
        providers=list(ort.get_available_providers()),
        cpus=usable_cpu_count(),
        frameworks=probe_frameworks(names),
    )
