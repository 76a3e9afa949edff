"""Outputs whose comparison cannot fail (constant, all NaN, all zero) are named in a warning."""

import numpy as np

from convkit.core.degenerate import degenerate_outputs

RNG = np.random.default_rng(0)


def _checks(outputs_for, batches=(1, 3)):
    checks = []
    for n in batches:
        x = RNG.standard_normal((n, 4)).astype(np.float32)
        checks.append((f"batch={n}", {"x": x}, outputs_for(x)))
    return checks


def test_an_output_that_ignores_its_input_is_constant():
    bias = np.array([0.1] * 10, dtype=np.float32)
    found = degenerate_outputs(_checks(lambda x: {"probs": np.tile(bias, (len(x), 1))}))
    assert [(w.output, w.kind) for w in found] == [("probs", "constant")]
    assert "cannot detect a wrong model" in found[0].message


def test_all_nan_and_all_zero_outputs_are_named():
    found = degenerate_outputs(
        _checks(lambda x: {"nan": np.full((len(x), 2), np.nan, np.float32), "zero": np.zeros_like(x)})
    )
    assert [(w.output, w.kind) for w in found] == [("nan", "all-nan"), ("zero", "all-zero")]


def test_outputs_that_follow_their_inputs_are_not_degenerate():
    assert degenerate_outputs(_checks(lambda x: {"y": np.tanh(x) * 1e-3, "ids": np.argmax(x, 1)})) == []


def test_one_distinct_input_cannot_show_constancy():
    x = RNG.standard_normal((1, 4)).astype(np.float32)
    same = [
        ("a", {"x": x}, {"y": np.ones((1, 2), np.float32)}),
        ("b", {"x": x}, {"y": np.ones((1, 2), np.float32)}),
    ]
    assert degenerate_outputs(same) == []
