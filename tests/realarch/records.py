"""What the real-architecture tests share: ``verified`` (verify with a JSON report, which must pass) and
``record``, what each test proved, for the README's coverage table (``scripts/realarch_table.py``).

A test calls ``record`` after its checks passed; with ``CONVKIT_REALARCH_RECORDS=DIR`` set, one JSON file per
case lands in DIR (the table script sets it); otherwise nothing is written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from conftest import run_convkit

ENV_VAR = "CONVKIT_REALARCH_RECORDS"


def verified(model: Path, source: str, data: str, report: Path) -> dict[str, Any]:
    """``convkit verify MODEL --source SOURCE --data DATA --report REPORT``: asserts it passed, returns the
    report."""
    done = run_convkit("verify", str(model), "--source", source, "--data", data, "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(report.read_text())
    assert result["passed"]
    return result


def max_abs_diff(report: dict[str, Any]) -> float:
    """The largest max abs diff over every comparison of a ``convkit verify --report`` JSON."""
    return max(float(c["max_abs_diff"]) for c in report["outputs"])


def record(
    framework: str,
    architecture: str,
    family: str,
    export_shape: str,
    second_shape: str,
    diff_at_export_shape: float,
    diff_at_second_shape: float,
) -> None:
    """Keep one proven case: exported at ``export_shape``, verified there and at ``second_shape``.

    Shapes are short texts a reader understands (``batch 2, seq 16``, ``batch 1, 96x96``).
    """
    folder = os.environ.get(ENV_VAR)
    if not folder:
        return
    case = {
        "framework": framework,
        "architecture": architecture,
        "family": family,
        "export_shape": export_shape,
        "second_shape": second_shape,
        "max_abs_diff": [diff_at_export_shape, diff_at_second_shape],
    }
    slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{framework}_{architecture}").strip("_")
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{slug}.json").write_text(json.dumps(case, indent=2) + "\n")
