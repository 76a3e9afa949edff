import numpy as np
import pytest

from convkit.errors import DataError
from convkit.reference.cnn import (
    SHAPES,
    fc1_to_nhwc,
    from_channels_last,
    load_digits,
    load_weights,
    save_weights,
    to_channels_last,
)


def test_canonical_weights_load_with_the_documented_shapes():
    weights = load_weights()
    assert {k: v.shape for k, v in weights.items()} == SHAPES
    assert sum(v.size for v in weights.values()) == 225_034


def test_channels_last_round_trip_is_exact():
    weights = load_weights()
    back = from_channels_last(to_channels_last(weights))
    for name, value in weights.items():
        np.testing.assert_array_equal(back[name], value)


def test_first_dense_layer_reads_the_same_features_in_either_layout():
    rng = np.random.default_rng(0)
    features_nchw = rng.standard_normal((64, 5, 5)).astype(np.float32)
    weight = rng.standard_normal((128, 1600)).astype(np.float32)
    nchw = weight @ features_nchw.reshape(-1)
    nhwc = features_nchw.transpose(1, 2, 0).reshape(-1) @ fc1_to_nhwc(weight)
    np.testing.assert_allclose(nchw, nhwc, rtol=1e-5, atol=1e-5)


def test_bad_weight_files_are_clear_errors(tmp_path):
    weights = load_weights()
    save_weights(tmp_path / "ok.npz", weights)
    assert load_weights(tmp_path / "ok.npz").keys() == weights.keys()
    np.savez(tmp_path / "bad.npz", **{**weights, "conv1.weight": np.zeros((3, 3))})
    with pytest.raises(DataError, match=r"wrong shape conv1.weight"):
        load_weights(tmp_path / "bad.npz")
    np.savez(tmp_path / "partial.npz", fc2=np.zeros(2))
    with pytest.raises(DataError, match="missing"):
        load_weights(tmp_path / "partial.npz")


def test_digits_are_split_reproducibly_and_shaped_for_the_cnn():
    x_train, y_train, x_test, y_test = load_digits()
    assert x_train.shape == (1437, 1, 28, 28) and x_test.shape == (360, 1, 28, 28)
    assert x_train.dtype == np.float32 and x_train.min() >= 0.0 and x_train.max() <= 1.0
    assert set(np.unique(y_train)) == set(range(10))
    np.testing.assert_array_equal(load_digits()[3], y_test)
    assert not np.array_equal(load_digits(seed=1)[3], y_test)
