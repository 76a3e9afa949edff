"""``assert_parity`` with a live ``nn.Module``, as a user's test suite calls it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from convkit import api  # noqa: E402
from convkit.core.inputs import parse_input_spec  # noqa: E402
from convkit.core.sources import load_factory  # noqa: E402
from convkit.testing import ParityAssertionError, assert_parity  # noqa: E402

pytestmark = pytest.mark.torch

SOURCE = (
    str(Path(__file__).resolve().parents[3] / "fixtures" / "models" / "torch_models.py") + ":reference_cnn"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    target = tmp_path_factory.mktemp("torch_parity") / "model.onnx"
    api.export_model(SOURCE, target, framework="torch", input_specs=[parse_input_spec("x:batch,1,28,28")])
    return target


def test_module_object_holds_parity_at_two_batch_sizes(exported):
    report = assert_parity(exported, load_factory(SOURCE))
    assert report.reference.startswith("torch")
    assert {c.data_set for c in report.comparisons} == {"batch=1", "batch=3"}


def test_given_inputs_are_used(exported):
    x = np.random.default_rng(1).random((5, 1, 28, 28), dtype=np.float32)
    report = assert_parity(exported, SOURCE, inputs={"x": x})
    assert [c.shape for c in report.comparisons] == [[5, 10]]


def test_a_module_whose_weights_moved_on_fails(exported):
    model = load_factory(SOURCE)
    with torch.no_grad():
        model.fc2.bias[0] += 1.0
    with pytest.raises(ParityAssertionError) as caught:
        assert_parity(exported, model)
    assert caught.value.report.worst.max_abs_diff > 1e-3
