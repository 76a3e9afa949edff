import json
import math

import numpy as np
import pytest

from convkit.core.compare import ParityReport, Tolerance, compare_arrays, compare_outputs, default_tolerance


def test_identical_float_outputs_pass_with_zero_error():
    x = np.linspace(-1, 1, 50, dtype=np.float32).reshape(5, 10)
    c = compare_arrays("y", x, x.copy())
    assert c.passed
    assert c.max_abs_diff == 0.0
    assert c.min_passing_atol == 0.0
    assert c.cosine_similarity == pytest.approx(1.0)


def test_difference_beyond_tolerance_fails_and_reports_the_atol_that_would_pass():
    expected = np.zeros((4, 4), dtype=np.float32)
    actual = expected.copy()
    actual[1, 2] = 0.25
    c = compare_arrays("y", expected, actual)
    assert not c.passed
    assert c.max_abs_diff == pytest.approx(0.25)
    assert c.mismatch_fraction == pytest.approx(1 / 16)
    assert c.min_passing_atol == pytest.approx(0.25)
    # the reported atol really passes, and anything below it fails
    assert compare_arrays("y", expected, actual, Tolerance(atol=c.min_passing_atol)).passed
    assert not compare_arrays("y", expected, actual, Tolerance(atol=c.min_passing_atol * 0.99)).passed
    assert "atol>=0.25 would pass" in c.reason


def test_min_passing_atol_accounts_for_rtol():
    expected = np.array([100.0, 1.0], dtype=np.float32)
    actual = np.array([100.5, 1.0], dtype=np.float32)
    c = compare_arrays("y", expected, actual, Tolerance(rtol=1e-3))
    # 0.5 - 1e-3 * 100 = 0.4
    assert c.min_passing_atol == pytest.approx(0.4, rel=1e-6)
    assert c.max_rel_diff == pytest.approx(0.005, rel=1e-4)


def test_nan_in_same_place_is_equal_but_one_sided_nan_fails():
    e = np.array([1.0, np.nan, np.inf], dtype=np.float32)
    assert compare_arrays("y", e, e.copy()).passed
    a = np.array([1.0, 2.0, np.inf], dtype=np.float32)
    c = compare_arrays("y", e, a)
    assert not c.passed
    assert "NaN or infinite on one side" in c.reason
    assert math.isinf(c.max_abs_diff)


def test_opposite_infinities_fail():
    e = np.array([np.inf], dtype=np.float64)
    assert not compare_arrays("y", e, -e).passed


def test_integer_outputs_compare_exactly():
    e = np.array([1, 2, 3], dtype=np.int64)
    assert compare_arrays("ids", e, e.copy()).passed
    c = compare_arrays("ids", e, np.array([1, 2, 4], dtype=np.int64), Tolerance(atol=10))
    assert not c.passed  # tolerance never applies to integers
    assert c.max_abs_diff == 1.0


def test_bool_and_string_outputs_compare_exactly():
    assert compare_arrays("b", np.array([True, False]), np.array([True, False])).passed
    assert not compare_arrays("b", np.array([True, False]), np.array([True, True])).passed
    s = np.array(["a", "b"], dtype=object)
    assert compare_arrays("s", s, s.copy()).passed
    assert not compare_arrays("s", s, np.array(["a", "c"], dtype=object)).passed


def test_shape_and_dtype_mismatch_fail_with_reason():
    c = compare_arrays("y", np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32))
    assert not c.passed and "shape" in c.reason
    c = compare_arrays("y", np.zeros(3, np.float32), np.zeros(3, np.float64))
    assert not c.passed and "dtype" in c.reason


def test_fp16_gets_looser_default_tolerance():
    assert default_tolerance(np.float16) > default_tolerance(np.float32)
    e = np.array([1.0], dtype=np.float16)
    a = np.array([1.0009765625], dtype=np.float16)  # one ulp above 1.0
    assert compare_arrays("y", e, a).passed
    assert not compare_arrays("y", e.astype(np.float32), a.astype(np.float32)).passed


def test_missing_output_fails():
    results = compare_outputs({"a": np.zeros(2), "b": np.zeros(2)}, {"a": np.zeros(2)})
    assert [r.passed for r in results] == [True, False]
    assert "no output named 'b'" in results[1].reason


def test_report_json_has_documented_schema_and_no_non_finite_numbers():
    e = np.array([1.0, np.nan], dtype=np.float32)
    report = ParityReport(model="m.onnx", reference="stored outputs", provider="cpu")
    report.comparisons = compare_outputs(
        {"y": e}, {"y": np.array([1.0, 0.0], dtype=np.float32)}, data_set="d0"
    )
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["passed"] is False
    out = data["outputs"][0]
    assert {"name", "max_abs_diff", "max_rel_diff", "passed", "data_set", "min_passing_atol"} <= set(out)
    assert out["max_abs_diff"] is None  # inf written as null


def test_empty_report_does_not_pass():
    assert not ParityReport(model="m", reference="r", provider="cpu").passed


def test_default_atol_scales_with_the_outputs_magnitude():
    """Large float32 logits (a ResNet-50's reach 1e3) differ by ~1e-3 near zero after another summation
    order: correct, and passed by the scale rule, which the report names."""
    expected = np.array([1159.0, 0.001, -3.0], dtype=np.float32)
    actual = expected + np.array([0.0, 8.2e-4, 0.0], dtype=np.float32)
    c = compare_arrays("logits", expected, actual)
    assert c.passed
    assert c.atol_rule == "scale" and c.expected_scale == pytest.approx(1159.0)
    assert c.atol == pytest.approx(1e-5 * 1159.0)
    assert c.tolerance_rule.startswith("atol 0.0116 (scale: 1e-05 * max|expected| 1.16e+03)")
    # the same error on an output of magnitude 1 is a real difference
    small = np.array([1.0, 0.001], dtype=np.float32)
    assert not compare_arrays("y", small, small + np.float32(8.2e-4)).passed


def test_a_given_atol_is_never_scaled():
    expected = np.array([1159.0, 0.001], dtype=np.float32)
    actual = expected + np.array([0.0, 8.2e-4], dtype=np.float32)
    c = compare_arrays("logits", expected, actual, Tolerance(atol=1e-5))
    assert not c.passed
    assert (c.atol, c.atol_rule) == (1e-5, "given")
    assert "atol 1e-05 (given)" in c.reason
    # a given rtol alone keeps the scaled default atol
    assert compare_arrays("logits", expected, actual, Tolerance(rtol=1e-6)).atol_rule == "scale"


def test_small_outputs_keep_the_dtype_default_and_exact_outputs_say_so():
    x = np.array([0.5, -0.25], dtype=np.float32)
    c = compare_arrays("y", x, x.copy())
    assert (c.atol, c.atol_rule) == (1e-5, "default")
    assert c.tolerance_rule == "atol 1e-05 (default) + rtol 0.0001 * |expected|"
    ids = compare_arrays("ids", np.array([1, 2]), np.array([1, 2]))
    assert (ids.atol_rule, ids.tolerance_rule) == ("exact", "exact (int64)")


def test_json_report_carries_the_rule_and_warnings_fields():
    report = ParityReport(model="m.onnx", reference="stored outputs", provider="cpu")
    report.comparisons = compare_outputs({"y": np.ones(3, np.float32)}, {"y": np.ones(3, np.float32)})
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["warnings"] == []
    assert {"atol_rule", "expected_scale", "tolerance_rule"} <= set(data["outputs"][0])
