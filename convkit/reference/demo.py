"""``convkit demo``: the main job on what the package carries, end to end (a wheel install runs it too).

1. verify the framework-free test cases the package carries (``reference/data/testcases``, stored outputs as
   the reference);
2. for each installed framework, export its reference CNN (the front end's own model, carrying the canonical
   weights), verify it against the framework at two batch sizes, and run the exported model on its test data;
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
from convkit.frontends import FRONTENDS, HasReferenceCNN, load_frontend_class
from convkit.reference.cnn import TESTCASES


def demo_frameworks() -> list[str]:
    """The registered front ends that build the reference CNN, in registry order (no framework imported)."""
    return [name for name in FRONTENDS if isinstance(load_frontend_class(name), HasReferenceCNN)]


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
    from convkit.report.text import format_table

    rows: list[DemoRow] = []
    for case in sorted(TESTCASES.iterdir()):
        echo(f"verify   {case.name} (bundled test case)")
        report = api.verify_testcase(case, options=options)
        rows.append(_row(f"verify {case.name}", report))
        for note in report.notes:
            echo(f"         note: {note}")
    for framework in demo_frameworks():
        rows.extend(_export_reference_cnn(framework, Path(out_dir), options, echo))
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


def _export_reference_cnn(
    framework: str, out_dir: Path, options: SessionOptions, echo: Callable[[str], None]
) -> list[DemoRow]:
    """Export ``framework``'s reference CNN, verify it against the framework at batch 1 and 3, run it."""
    from convkit import api
    from convkit.core.inputs import EXPORT_SYMBOLIC_SIZE, InputSpec, random_inputs, verification_data_sets
    from convkit.frontends import get_frontend
    from convkit.graph.model import load_onnx
    from convkit.reference.cnn import load_weights

    task = f"export {framework} reference_cnn"
    try:
        frontend = get_frontend(framework)
    except ConvkitError as exc:
        echo(f"skip     {framework}: {exc}")
        return [DemoRow(task, framework, "-", "-", "SKIPPED")]
    assert isinstance(frontend, HasReferenceCNN)
    native = frontend.reference_cnn(load_weights())
    dims: list[int | str] = [1, 28, 28]
    dims = ["batch", *dims] if frontend.reference_layout == "NCHW" else ["batch", *dims[1:], 1]
    spec = InputSpec("x", dims)
    target = out_dir / f"{framework}_reference_cnn" / "model.onnx"
    echo(f"export   {framework} reference CNN -> {target}")
    example = random_inputs([spec], EXPORT_SYMBOLIC_SIZE, seed=0)
    summary = api.export_native(
        frontend,
        native,
        specs=[spec],
        example=example,
        output=target,
        source=f"reference_cnn:{framework}",
        options=options,
    )
    echo(f"verify   {target} against {framework} (batch 1 and 3)")
    data_sets = verification_data_sets([spec], seed=1)
    verified = api.verify_native(load_onnx(target), frontend, native, data_sets=data_sets, options=options)
    run = api.run_model(target, target.parent / "test_data_set_0", options)
    echo(f"run      {target}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in run.outputs.items()))
    return [_row(task, summary.report), _row(f"verify {framework} reference_cnn", verified)]
