"""The README's coverage table: run the real-architecture tests and print what each one proved.

    .venv/bin/python scripts/realarch_table.py [PYTEST ARGS...]     # e.g. -k bert

Runs ``tests/realarch`` with ``CONVKIT_REALARCH_RECORDS`` pointing at a scratch folder; every case that passes
leaves one record there (``tests/realarch/records.py``), and the table lists exactly those: a case that failed
or was skipped is not in it. Exit status: pytest's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def table(records: list[dict[str, object]]) -> str:
    lines = [
        "| framework | architecture | family | exported at | verified at | max abs diff |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(records, key=lambda r: (str(r["framework"]), str(r["family"]), str(r["architecture"]))):
        first, second = r["max_abs_diff"]  # type: ignore[misc]
        lines.append(
            f"| {r['framework']} | {r['architecture']} | {r['family']} | {r['export_shape']} | "
            f"{r['export_shape']}; {r['second_shape']} | {first:.1e}; {second:.1e} |"
        )
    return "\n".join(lines)


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, CONVKIT_REALARCH_RECORDS=folder)
        command = [sys.executable, "-m", "pytest", "-q", "tests/realarch", *sys.argv[1:]]
        code = subprocess.run(command, cwd=ROOT, env=env).returncode
        records = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]
    print()
    print(table(records))
    return code


if __name__ == "__main__":
    sys.exit(main())
