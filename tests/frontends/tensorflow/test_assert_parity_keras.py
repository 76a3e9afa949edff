"""``assert_parity`` with a live Keras model, as a user's test suite calls it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from convkit import api
from convkit.core.inputs import parse_input_spec
from convkit.core.sources import load_factory
from convkit.frontends import get_frontend
from convkit.testing import ParityAssertionError, assert_parity

pytestmark = pytest.mark.tensorflow

SOURCE = (
    str(Path(__file__).resolve().parents[3] / "fixtures" / "models" / "keras_models.py") + ":reference_cnn"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    get_frontend("tensorflow")  # sets TensorFlow up quietly before the factory imports it
    target = tmp_path_factory.mktemp("keras_parity") / "model.onnx"
    api.export_model(
        SOURCE, target, framework="tensorflow", input_specs=[parse_input_spec("x:batch,28,28,1")]
    )
    return target


def test_keras_model_object_holds_parity(exported):
    report = assert_parity(exported, load_factory(SOURCE))
    assert report.passed and report.reference.startswith("tensorflow")


def test_a_keras_model_with_other_weights_fails(exported):
    model = load_factory(SOURCE)
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    bias[0] += 1.0  # one class only: softmax ignores a shift of every logit
    dense.set_weights([kernel, bias])
    with pytest.raises(ParityAssertionError, match="FAIL"):
        assert_parity(exported, model, framework="tensorflow")


def test_localize_falls_back_to_the_reference_when_no_layer_diverges(exported):
    model = load_factory(SOURCE)
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    bias[0] += 1.0
    dense.set_weights([kernel, bias])
    with pytest.raises(ParityAssertionError) as caught:
        assert_parity(exported, model, localize="auto")
    localization = caught.value.report.localization
    # the last Dense differs, but its ONNX counterpart is paired: the framework names it
    assert localization["oracle"] == "tensorflow layers"
    assert localization["first_divergence"]["source"] == dense.name
    healthy = assert_parity(exported, load_factory(SOURCE), localize="auto")
    assert healthy.localization["oracle"] == "onnx reference implementation"
    assert any("fell back" in note for note in healthy.localization["notes"])
