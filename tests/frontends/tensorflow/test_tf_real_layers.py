"""Layers of real Keras networks that the TensorFlow front end once exported wrongly or not at all, in tiny
hand-written models (the networks themselves are in ``tests/realarch``):

- a ``Normalization`` layer holds its mean and variance as tensors, not variables; they must become constants
  of the ONNX model, not inputs of it;
- exact GELU (Keras's default ``gelu``) is ``Erfc`` in TensorFlow, which tf2onnx has no handler for;
- grouped convolutions, which Keras compiles with XLA, stay function calls unless inlined;
- an op tf2onnx cannot convert names a way out that works; dimensions the model leaves open stay open.

Every export is checked against Keras with onnxruntime at two batch sizes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_convkit

for _package in ("tensorflow", "keras", "tf2onnx"):
    if importlib.util.find_spec(_package) is None:
        pytest.skip(
            f"{_package} is not installed (pip install 'convkit[tensorflow]')", allow_module_level=True
        )

from convkit.core.compare import compare_outputs  # noqa: E402
from convkit.core.inputs import InputSpec  # noqa: E402
from convkit.core.runtime import RuntimeSession  # noqa: E402
from convkit.errors import UnsupportedModelError  # noqa: E402
from convkit.frontends import ExportOptions  # noqa: E402
from convkit.frontends.tensorflow import TensorFlowFrontend  # noqa: E402
from convkit.graph.model import load_onnx  # noqa: E402

pytestmark = pytest.mark.tensorflow


@pytest.fixture(scope="module")
def frontend() -> TensorFlowFrontend:
    fe = TensorFlowFrontend()
    reason = fe.is_available()
    if reason is not None:
        pytest.skip(f"TensorFlow front end unavailable: {reason}")
    return fe


@pytest.fixture(scope="module")
def keras(frontend: TensorFlowFrontend) -> Any:
    import keras

    keras.utils.set_random_seed(7)
    return keras


def _export_and_check(frontend, model, specs, path: Path, opset: int | None = None):
    """Export, then compare onnxruntime with Keras at batch 1 and 3 (inputs spread over -3..3, where GELU's
    tails and a normalization's offsets both matter); returns the ONNX model's input names and op types."""
    result = frontend.export(model, specs, _data(specs, 2, 0), path, ExportOptions(opset=opset))
    session = RuntimeSession(load_onnx(path))
    for batch in (1, 3):
        feeds = _data(specs, batch, batch)
        expected = frontend.run(model, feeds)
        actual = session.run(feeds)
        named = dict(zip(actual, expected, strict=True))
        for comparison in compare_outputs(named, actual, data_set=f"batch={batch}"):
            assert comparison.passed, comparison
    proto = load_onnx(path).proto
    return result, [value.name for value in proto.graph.input], {node.op_type for node in proto.graph.node}


def _data(specs, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        spec.name: (rng.standard_normal(spec.shape(batch)) * 3).astype(spec.dtype)
        for spec in specs  # every test model here has one symbolic dim, the batch
    }


def test_adapted_normalization_becomes_constants_not_inputs(frontend, keras, tmp_path):
    x = keras.Input((4,), name="x")
    norm = keras.layers.Normalization()
    rng = np.random.default_rng(1)
    norm.adapt(rng.normal([1.0, -2.0, 5.0, 0.0], [0.5, 2.0, 3.0, 1.0], (200, 4)).astype("float32"))
    model = keras.Model(x, keras.layers.Dense(3, name="y")(norm(x)))
    _, inputs, _ = _export_and_check(frontend, model, [InputSpec("x", ["batch", 4])], tmp_path / "m.onnx")
    assert inputs == ["x"]  # was: x, .../normalization/Sub/y:0, .../Sqrt/x:0, which verify then asked for


def test_normalization_with_given_statistics_becomes_constants(frontend, keras, tmp_path):
    image = keras.Input((5, 5, 3), name="image")
    norm = keras.layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3600.0, 3000.0, 2500.0])
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(norm(image)))
    model = keras.Model(image, pooled)
    specs = [InputSpec("image", ["batch", 5, 5, 3])]
    _, inputs, _ = _export_and_check(frontend, model, specs, tmp_path / "m.onnx")
    assert inputs == ["image"]


def test_exact_gelu_converts_as_one_minus_erf(frontend, keras, tmp_path):
    x = keras.Input((6,), name="x")
    h = keras.activations.gelu(keras.layers.Dense(8)(x), approximate=False)
    model = keras.Model(x, keras.layers.Dense(2, name="y")(h))
    _, _, ops = _export_and_check(frontend, model, [InputSpec("x", ["batch", 6])], tmp_path / "m.onnx")
    assert "Erf" in ops and "Erfc" not in ops


def test_grouped_convolution_that_keras_compiles_with_xla_is_inlined(frontend, keras, tmp_path):
    image = keras.Input((8, 8, 6), name="image")
    h = keras.layers.Conv2D(6, 3, padding="same", groups=3)(image)
    h = keras.layers.DepthwiseConv2D(3, padding="same")(h)
    model = keras.Model(image, keras.layers.GlobalAveragePooling2D()(h))
    specs = [InputSpec("image", ["batch", 8, 8, 6])]
    _, _, ops = _export_and_check(frontend, model, specs, tmp_path / "m.onnx")
    assert "Conv" in ops and not ops & {"StatefulPartitionedCall", "PartitionedCall"}


def test_an_op_converted_from_a_later_opset_names_that_opset(frontend, keras, tmp_path):
    x = keras.Input((6,), name="x")
    model = keras.Model(x, keras.activations.gelu(keras.layers.Dense(4)(x), approximate=False))
    specs = [InputSpec("x", ["batch", 6])]
    with pytest.raises(UnsupportedModelError, match="Erfc") as refused:
        frontend.export(model, specs, _data(specs, 2, 0), tmp_path / "m.onnx", ExportOptions(opset=8))
    assert "--opset 9" in refused.value.hint
    _export_and_check(frontend, model, specs, tmp_path / "m.onnx", opset=9)  # as the hint says


FACTORIES = """
import keras
import tensorflow as tf


class LogGamma(keras.layers.Layer):
    def call(self, t):
        return tf.math.lgamma(tf.abs(t) + 1.0)


def lgamma_model():
    x = keras.Input((4,), name="x")
    return keras.Model(x, LogGamma()(x))


def text_model():
    keras.utils.set_random_seed(3)
    ids = keras.Input((None,), dtype="int64", name="ids")
    h = keras.layers.Embedding(50, 8)(ids)
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(8, activation="gelu")(h))
    return keras.Model(ids, keras.layers.Dense(3, name="y")(h))


def fixed_text_model():
    keras.utils.set_random_seed(3)
    ids = keras.Input((16,), dtype="int64", name="ids")
    h = keras.layers.Flatten()(keras.layers.Embedding(50, 2)(ids))
    return keras.Model(ids, keras.layers.Dense(3, name="y")(h))
"""


@pytest.fixture(scope="module")
def factories(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("factories") / "models.py"
    path.write_text(FACTORIES)
    return path


def test_an_op_tf2onnx_never_converts_names_the_jax_backend(factories, tmp_path):
    done = run_convkit("export", f"{factories}:lgamma_model", "-o", str(tmp_path / "m.onnx"))
    assert done.returncode == 2, done.stdout + done.stderr
    error, hint = done.stderr.strip().splitlines()[-2:]
    assert error.startswith("error: tf2onnx could not convert") and "Lgamma" in error
    assert "--backend jax" in hint and "converts Lgamma at no opset" in hint
    assert "--opset" not in hint  # tf2onnx converts it at no opset it writes
    assert not (tmp_path / "m.onnx").exists()


def _ids(path: Path, shape: tuple[int, int], seed: int) -> str:
    np.savez(path, ids=np.random.default_rng(seed).integers(0, 50, shape).astype("int64"))
    return str(path)


def test_data_export_leaves_open_the_dims_the_model_leaves_open(factories, tmp_path):
    source = f"{factories}:text_model"
    model = tmp_path / "text.onnx"
    done = run_convkit("export", source, "--data", _ids(tmp_path / "a.npz", (2, 16), 0), "-o", str(model))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kept static" not in done.stdout
    value = load_onnx(model).proto.graph.input[0]
    assert [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] == ["batch", "seq"]
    report = tmp_path / "r.json"
    other = _ids(tmp_path / "b.npz", (3, 9), 1)
    verified = run_convkit("verify", str(model), "--source", source, "--data", other, "--report", str(report))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(report.read_text())["outputs"][0]["shape"] == [3, 3]


def test_data_export_keeps_the_dims_the_model_fixes_and_says_so(factories, tmp_path):
    model = tmp_path / "fixed.onnx"
    data = _ids(tmp_path / "a.npz", (2, 16), 0)
    done = run_convkit("export", f"{factories}:fixed_text_model", "--data", data, "-o", str(model))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "note: kept static: ids axis 1 (16): the model fixes it" in done.stdout
    value = load_onnx(model).proto.graph.input[0]
    assert [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] == ["batch", 16]
