"""``convkit demo``: the main job on the bundled fixtures, end to end.

1. verify the framework-free test cases in ``fixtures/testcases`` (stored outputs as the reference);
2. for each installed framework, export its reference CNN from ``fixtures/models``, verify it against the
   framework at two batch sizes, and run the exported model on its test data;
3. when two frameworks or more ran, the reference CNN with the same weights in each (``convkit matrix``):
   do their ONNX models agree with each other;
4. print one parity table.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from convkit.core.compare import ParityReport
from convkit.core.runtime import SessionOptions
from convkit.errors import EXIT_OK, EXIT_PARITY_FAILED, ConvkitError
from convkit.frontends import REGISTRY

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"

# front end -> (factory source under fixtures/, input spec), from the registry
DEMO_EXPORTS: dict[str, tuple[str, str]] = {info.name: info.demo for info in REGISTRY if info.demo}


@dataclass
class DemoRow:
    task: str
    reference: str
    provider: str
    max_abs_diff: str
    result: str


def _row(task: str, report: ParityReport) -> DemoRow:
    worst = report.worst
    diff = "-" if worst is None or worst.max_abs_diff is None else f"{worst.max_abs_diff:.3g}"
    return DemoRow(task, report.reference, report.provider, diff, "PASS" if report.passed else "FAIL")


def run_demo(out_dir: str, options: SessionOptions, echo: Callable[[str], None]) -> int:
    """Run the demo; returns the exit code (0 when everything that ran holds parity)."""
    from convkit import api
    from convkit.core.inputs import parse_input_spec
    from convkit.frontends import get_frontend
    from convkit.report.text import format_table

    if not (FIXTURES / "testcases").is_dir():
        raise ConvkitError(
            f"bundled fixtures not found at {FIXTURES}", "run the demo from a convkit checkout"
        )
    rows: list[DemoRow] = []
    for case in sorted((FIXTURES / "testcases").iterdir()):
        echo(f"verify   {case.relative_to(FIXTURES.parent)}")
        report = api.verify_testcase(case, options=options)
        rows.append(_row(f"verify {case.name}", report))
        for note in report.notes:
            echo(f"         note: {note}")
    for framework, (source_rel, spec_text) in DEMO_EXPORTS.items():
        try:
            get_frontend(framework)
        except ConvkitError as exc:
            echo(f"skip     {framework}: {exc}")
            rows.append(DemoRow(f"export {framework} reference_cnn", framework, "-", "-", "SKIPPED"))
            continue
        source = str(FIXTURES / source_rel)
        target = Path(out_dir) / f"{framework}_reference_cnn" / "model.onnx"
        echo(f"export   {framework} reference CNN -> {target}")
        summary = api.export_model(
            source, target, framework=framework, input_specs=[parse_input_spec(spec_text)], options=options
        )
        rows.append(_row(f"export {framework} reference_cnn", summary.report))
        echo(f"verify   {target} against {framework} (batch 1 and 3)")
        rows.append(
            _row(
                f"verify {framework} reference_cnn",
                api.verify_model(target, source, framework=framework, options=options),
            )
        )
        run = api.run_model(target, target.parent / "test_data_set_0", options)
        echo(f"run      {target}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in run.outputs.items()))
    export_rows = [r for r in rows if r.task.startswith("export ") and r.result != "SKIPPED"]
    exported = [r.reference for r in export_rows]
    if len(exported) >= 2:
        from convkit.reference.matrix import run_matrix

        echo(f"matrix   the reference CNN with the same weights in {', '.join(exported)}")
        matrix = run_matrix(exported, out_dir=Path(out_dir) / "matrix", options=options)
        # NOTE: why each against the first, then one row for every pair: with eight frameworks the 28 pairs
        # would drown the table; the matrix compares them all and the last row says whether all agree.
        pairs = list(itertools.combinations(exported, 2))
        diffs = {pair: matrix.pairwise.get(pair[0], {}).get(pair[1]) for pair in pairs}
        for a, b in [pair for pair in pairs if pair[0] == exported[0]]:
            diff = diffs[(a, b)]
            agree = diff is not None and f"{a}/{b}" not in matrix.pairwise_failures
            shown = "-" if diff is None else f"{diff:.3g}"
            result = "PASS" if agree else "FAIL"
            rows.append(DemoRow(f"agree {a} vs {b}", b, export_rows[0].provider, shown, result))
        if len(exported) > 2:
            known = [d for d in diffs.values() if d is not None]
            shown = f"{max(known):.3g}" if known else "-"
            result = "PASS" if matrix.pairwise_passed and len(known) == len(pairs) else "FAIL"
            task = f"agree all {len(pairs)} pairs"
            rows.append(DemoRow(task, "every framework", export_rows[0].provider, shown, result))
    echo("")
    echo(
        format_table(
            ["task", "reference", "provider", "max abs diff", "result"],
            [[r.task, r.reference, r.provider, r.max_abs_diff, r.result] for r in rows],
        )
    )
    failed = [r for r in rows if r.result == "FAIL"]
    echo(
        f"\n{'FAIL' if failed else 'PASS'}: {len(rows) - len(failed)} of {len(rows)} checks hold parity"
        + (
            f" ({sum(r.result == 'SKIPPED' for r in rows)} skipped)"
            if any(r.result == "SKIPPED" for r in rows)
            else ""
        )
    )
    return EXIT_PARITY_FAILED if failed else EXIT_OK
