"""onnxruntime for real: feeds checked before they reach it, providers, old-opset upgrades."""

import numpy as np
import pytest

from convkit.api import verify_testcase
from convkit.core.runtime import RuntimeSession, SessionOptions, available_providers, resolve_providers
from convkit.errors import DataError, ProviderUnavailableError
from convkit.graph.model import load_onnx

HAS_CUDA = "CUDAExecutionProvider" in available_providers()


@pytest.fixture
def session(cnn_case):
    return RuntimeSession(load_onnx(cnn_case), SessionOptions("cpu"))


def test_runs_with_any_batch(session):
    for batch in (1, 5):
        probs = session.run({"x": np.zeros((batch, 1, 28, 28), np.float32)})["probs"]
        assert probs.shape == (batch, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_wrong_input_name_lists_what_the_model_takes(session):
    with pytest.raises(DataError) as info:
        session.run({"image": np.zeros((1, 1, 28, 28), np.float32)})
    assert "missing input(s) x" in info.value.message and "unknown input(s) image" in info.value.message
    assert "x (float32 [batch,1,28,28])" in info.value.hint


def test_wrong_dtype_says_how_to_cast(session):
    with pytest.raises(DataError) as info:
        session.run({"x": np.zeros((1, 1, 28, 28), np.float64)})
    assert "float64" in info.value.message and "astype('float32')" in info.value.hint


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 3, 28, 28)])
def test_wrong_shape_names_the_dimension(session, shape):
    with pytest.raises(DataError, match="input 'x' has shape"):
        session.run({"x": np.zeros(shape, np.float32)})


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_cuda_when_unavailable_is_a_clear_error():
    with pytest.raises(ProviderUnavailableError) as info:
        resolve_providers("cuda")
    assert "onnxruntime-gpu" in info.value.hint


def test_auto_picks_cuda_only_when_available():
    expected = "CUDAExecutionProvider" if HAS_CUDA else "CPUExecutionProvider"
    assert resolve_providers("auto")[0] == expected
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]


def test_old_opset_model_is_upgraded_in_memory_and_says_so(old_opset_case):
    before = (old_opset_case / "model.onnx").read_bytes()
    report = verify_testcase(old_opset_case, options=SessionOptions("cpu"))
    assert report.passed
    assert any("upgraded in memory to opset 17" in note for note in report.notes)
    assert (old_opset_case / "model.onnx").read_bytes() == before  # the file itself is untouched


def test_optimization_levels_agree(cnn_case):
    model = load_onnx(cnn_case)
    x = {"x": np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)}
    full = RuntimeSession(model, SessionOptions("cpu", optimization="all")).run(x)["probs"]
    none = RuntimeSession(model, SessionOptions("cpu", optimization="disabled")).run(x)["probs"]
    np.testing.assert_allclose(full, none, atol=1e-6)
