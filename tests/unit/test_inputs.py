import numpy as np
import pytest

from convkit.core.inputs import parse_input_spec, random_inputs, specs_from_arrays, verification_data_sets
from convkit.errors import DataError


def test_parse_input_spec_with_symbolic_dims_and_dtype():
    spec = parse_input_spec("x:batch,3,224,224:float32")
    assert spec.name == "x"
    assert spec.dims == ["batch", 3, 224, 224]
    assert spec.dtype == "float32"
    assert spec.shape(2) == (2, 3, 224, 224)


def test_parse_input_spec_integer_range():
    spec = parse_input_spec("ids:batch,16:int64:0..1000")
    assert (spec.dtype, spec.low, spec.high) == ("int64", 0, 1000)
    data = random_inputs([spec], 4)["ids"]
    assert data.dtype == np.int64 and data.shape == (4, 16)
    assert data.min() >= 0 and data.max() < 1000


@pytest.mark.parametrize("text", ["x", "x:", ":3", "x:3,?:float32", "x:3:complex7", "x:3:int64:5..1", "1x:3"])
def test_bad_input_specs_are_clear_errors(text):
    with pytest.raises(DataError) as info:
        parse_input_spec(text)
    assert "x:batch" in (info.value.hint or "") or "dtype" in info.value.message


def test_random_inputs_are_reproducible():
    specs = [parse_input_spec("x:batch,4")]
    np.testing.assert_array_equal(random_inputs(specs, 2, seed=1)["x"], random_inputs(specs, 2, seed=1)["x"])
    assert not np.array_equal(random_inputs(specs, 2, seed=1)["x"], random_inputs(specs, 2, seed=2)["x"])


def test_verification_checks_every_symbolic_dim_at_two_sizes():
    specs = [parse_input_spec("x:batch,seq,8")]
    sets = verification_data_sets(specs)
    assert [data["x"].shape for _, data in sets] == [(1, 1, 8), (3, 3, 8)]
    assert sets[0][0] == "batch=1,seq=1"


def test_static_specs_give_one_data_set():
    assert len(verification_data_sets([parse_input_spec("x:2,8")])) == 1


def test_specs_from_arrays_make_the_first_dim_dynamic():
    specs = specs_from_arrays({"x": np.zeros((5, 3), np.float32)})
    assert specs[0].dims == ["batch", 3]
    assert specs_from_arrays({"x": np.zeros((5, 3))}, dynamic_batch=False)[0].dims == [5, 3]
