"""``keras.applications`` networks through the TensorFlow front end, as a user runs them: ``convkit export``
from example data (batch 2), then ``convkit verify`` against Keras at that shape and at another batch (and,
for a network built for any image size, another size too).

Each network stands for something that used to break: EfficientNet's ``Normalization`` constants became
graph inputs, ConvNeXt's exact GELU (``Erfc``) and XLA-compiled depthwise convolutions did not convert.
Random weights (``fixtures/models/keras_apps.py``), livened so that outputs depend on the input.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_convkit
from records import max_abs_diff, record, verified

for _package in ("tensorflow", "keras", "tf2onnx"):
    if importlib.util.find_spec(_package) is None:
        pytest.skip(
            f"{_package} is not installed (pip install 'convkit[tensorflow]')", allow_module_level=True
        )

pytestmark = [pytest.mark.slow, pytest.mark.tensorflow]

MODELS = ROOT / "fixtures" / "models" / "keras_apps.py"

# factory, label, export shape, second shape, the input's ONNX dims, pixel inputs (0..255) or normalized
CASES = {
    "mobilenet_v2": ("MobileNetV2 0.35", (2, 96, 96, 3), (3, 96, 96, 3), ["batch", 96, 96, 3], False),
    "efficientnet_b0": (
        "EfficientNetB0",
        (2, 64, 64, 3),
        (3, 80, 80, 3),
        ["batch", "input_dim1", "input_dim2", 3],
        True,
    ),
    "densenet121": ("DenseNet121", (2, 64, 64, 3), (3, 64, 64, 3), ["batch", 64, 64, 3], False),
    "convnext_tiny": ("ConvNeXtTiny", (2, 32, 32, 3), (3, 32, 32, 3), ["batch", 32, 32, 3], True),
}


def _images(path: Path, shape: tuple[int, ...], pixels: bool, seed: int) -> str:
    rng = np.random.default_rng(seed)
    array = rng.uniform(0, 255, shape) if pixels else rng.uniform(-1, 1, shape)
    np.savez(path, input=array.astype("float32"))
    return str(path)


def _shape_text(shape: tuple[int, ...]) -> str:
    return f"batch {shape[0]}, {shape[1]}x{shape[2]}"


@pytest.mark.parametrize("name", list(CASES))
def test_keras_application_exports_and_holds_parity_at_another_shape(tmp_path, name):
    import onnx
    from onnx import numpy_helper

    label, first, second, input_dims, pixels = CASES[name]
    source = f"{MODELS}:{name}"
    data_first = _images(tmp_path / "first.npz", first, pixels, seed=1)
    data_second = _images(tmp_path / "second.npz", second, pixels, seed=2)
    model = tmp_path / f"{name}.onnx"

    done = run_convkit("export", source, "--data", data_first, "-o", str(model))
    assert done.returncode == 0, done.stdout + done.stderr
    proto = onnx.load(str(model), load_external_data=False)
    # one input, the image: no constant of the network became an input (EfficientNet's Normalization did)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert [value.name for value in proto.graph.input] == ["input"]
    assert dims == input_dims
    if any(isinstance(d, int) for d in input_dims[1:3]):
        assert "kept static: input axes 1, 2, 3" in done.stdout

    # the check means something: two different images give clearly different outputs
    stored = sorted((tmp_path / f"{name}.test_data" / "test_data_set_0").glob("output_*.pb"))
    output = numpy_helper.to_array(onnx.load_tensor(str(stored[0])))
    assert np.abs(output[0] - output[1]).max() > 1e-3 * np.abs(output).max()

    at_first = verified(model, source, data_first, tmp_path / "first.json")
    at_second = verified(model, source, data_second, tmp_path / "second.json")
    assert [o["shape"][0] for o in at_second["outputs"]] == [second[0]] * len(at_second["outputs"])
    record(
        "tensorflow",
        f"{label} (keras.applications)",
        "convnet",
        _shape_text(first),
        _shape_text(second),
        max_abs_diff(at_first),
        max_abs_diff(at_second),
    )
