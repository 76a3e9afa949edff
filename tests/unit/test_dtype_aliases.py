"""Dtypes as users type them: ``fp32``, ``half``, ``long`` ... in ``--input NAME:DIMS:DTYPE``."""

import pytest

from convkit.core.inputs import parse_input_spec, random_inputs
from convkit.errors import DataError


@pytest.mark.parametrize(
    ("typed", "dtype"),
    [
        ("fp32", "float32"),
        ("FP32", "float32"),
        ("f32", "float32"),
        ("float", "float32"),
        ("fp16", "float16"),
        ("half", "float16"),
        ("fp64", "float64"),
        ("double", "float64"),
        ("int", "int64"),
        ("long", "int64"),
        ("boolean", "bool"),
        ("int8", "int8"),
    ],
)
def test_a_dtype_alias_gives_the_numpy_dtype(typed, dtype):
    spec = parse_input_spec(f"x:batch,3:{typed}")
    assert spec.dtype == dtype
    assert random_inputs([spec], 2)["x"].dtype == dtype


def test_an_ambiguous_code_is_refused_with_the_names_to_use():
    with pytest.raises(DataError) as caught:
        parse_input_spec("x:batch,3:i8")  # int64 to NumPy, int8 to Rust
    assert "unknown dtype 'i8'" in caught.value.message
    assert "fp32" in caught.value.hint and "float32" in caught.value.hint
