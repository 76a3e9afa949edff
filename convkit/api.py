"""What the CLI and users call: ``inspect_model``, ``run_model``, ``verify_testcase``, ``verify_model``,
``export_model``, ``migrate_model``. Each returns data; rendering is ``convkit.report``'s job.

NOTE: why a module of re-exports: the public surface stays small and stable while the flow lives in
``convkit.core`` (one module per step).
"""

from __future__ import annotations

import os

from convkit.core.export import ExportSummary, export_model, export_native
from convkit.core.run import RunResult, open_session, run_model
from convkit.core.verify import Runtimes, specs_from_session, verify_model, verify_native, verify_testcase
from convkit.graph.info import ModelSummary, summarize
from convkit.graph.model import load_onnx
from convkit.migrate import MigrateSummary, migrate_model

__all__ = [
    "ExportSummary",
    "MigrateSummary",
    "ModelSummary",
    "RunResult",
    "Runtimes",
    "export_model",
    "export_native",
    "inspect_model",
    "migrate_model",
    "open_session",
    "run_model",
    "specs_from_session",
    "verify_model",
    "verify_native",
    "verify_testcase",
]


def inspect_model(path: str | os.PathLike[str]) -> ModelSummary:
    """Summarize an ONNX file (see ``convkit.graph.info.ModelSummary``)."""
    return summarize(load_onnx(path))
