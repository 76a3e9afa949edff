import os

import numpy as np
import pytest

from convkit.core.artifacts import (
    atomic_path,
    list_test_data_sets,
    load_arrays,
    read_test_data_set,
    save_npz_atomic,
    write_test_data_set,
)
from convkit.errors import DataError, InputFileError


def test_test_data_set_round_trip_keeps_names_order_and_dtypes(tmp_path):
    inputs = {"image": np.random.rand(2, 3).astype(np.float32), "ids": np.arange(4, dtype=np.int64)}
    outputs = {"logits": np.ones((2, 5), np.float32), "mask": np.array([True, False])}
    folder = write_test_data_set(tmp_path, inputs, outputs, index=3)
    assert folder.name == "test_data_set_3"
    assert sorted(p.name for p in folder.iterdir()) == [
        "input_0.pb",
        "input_1.pb",
        "output_0.pb",
        "output_1.pb",
    ]
    got_in, got_out = read_test_data_set(folder)
    assert list(got_in) == ["image", "ids"] and list(got_out) == ["logits", "mask"]
    for name, value in {**inputs, **outputs}.items():
        got = {**got_in, **got_out}[name]
        assert got.dtype == value.dtype
        np.testing.assert_array_equal(got, value)
    assert list_test_data_sets(tmp_path) == [folder]


def test_test_data_set_is_readable_by_onnx_itself(tmp_path):
    import onnx
    from onnx import numpy_helper

    folder = write_test_data_set(
        tmp_path, {"x": np.arange(6, dtype=np.float32)}, {"y": np.zeros(1, np.float32)}
    )
    tensor = onnx.load_tensor(str(folder / "input_0.pb"))
    assert tensor.name == "x"
    np.testing.assert_array_equal(numpy_helper.to_array(tensor), np.arange(6, dtype=np.float32))


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_atomic_write_gives_normal_permissions(tmp_path):
    save_npz_atomic(tmp_path / "a.npz", {"x": np.zeros(2)})
    mode = (tmp_path / "a.npz").stat().st_mode & 0o777
    assert mode & 0o044  # readable by others, not mkstemp's 0600


def test_rewriting_a_data_set_replaces_it_whole(tmp_path):
    write_test_data_set(tmp_path, {"a": np.zeros(1), "b": np.zeros(1)}, {"y": np.zeros(1)})
    folder = write_test_data_set(tmp_path, {"a": np.ones(1)}, {"y": np.ones(1)})
    assert sorted(p.name for p in folder.iterdir()) == ["input_0.pb", "output_0.pb"]
    assert [p.name for p in tmp_path.iterdir()] == ["test_data_set_0"]


def test_load_arrays_from_npz_npy_and_folder(tmp_path):
    x = np.arange(3, dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    np.save(tmp_path / "d.npy", x)
    folder = write_test_data_set(tmp_path / "case", {"x": x})
    for path in (tmp_path / "d.npz", tmp_path / "d.npy", folder):
        np.testing.assert_array_equal(load_arrays(path, ["x"])["x"], x)


def test_load_arrays_never_unpickles(tmp_path):
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled"):
        load_arrays(tmp_path / "evil.npy", ["x"])


def test_load_arrays_errors(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        load_arrays(tmp_path / "missing.npz", ["x"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz"):
        load_arrays(tmp_path / "bad.npz", ["x"])
    np.save(tmp_path / "one.npy", np.zeros(2))
    with pytest.raises(DataError, match="2 inputs"):
        load_arrays(tmp_path / "one.npy", ["a", "b"])
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(InputFileError, match="neither"):
        load_arrays(tmp_path / "data.csv", ["x"])


def test_corrupt_tensor_file_is_a_data_error(tmp_path):
    folder = write_test_data_set(tmp_path, {"x": np.zeros(4, np.float32)})
    (folder / "input_0.pb").write_bytes(b"\xff\xfe garbage \x00" * 3)
    with pytest.raises(DataError, match="input_0.pb"):
        read_test_data_set(folder)
