#!/usr/bin/env bash
# The test suite, as CI runs it: set up .venv (idempotent), lint, type-check the package, test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy (the package; env/ runs in other environments)"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
