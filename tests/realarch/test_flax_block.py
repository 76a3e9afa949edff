"""A Flax NNX transformer block through the JAX front end, as a user runs it: ``convkit export`` from example
data (batch 2, 16 tokens), then ``convkit verify`` against JAX there and at batch 3 with 9 tokens, since the
export leaves the sequence length open (JAX traces it symbolically); the width, fixed by the weights, stays.

Below it, the rule that decides which axes of ``--data`` stay open, on two plain JAX functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, run_convkit
from records import max_abs_diff, record, verified

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("jax2onnx")

from convkit.core.inputs import InputSpec
from convkit.frontends.jax import dynamic

pytestmark = pytest.mark.jax

SOURCE = f"{ROOT / 'fixtures' / 'models' / 'jax_models.py'}:transformer_block"


def _tokens(path: Path, batch: int, seq: int, seed: int) -> str:
    np.savez(path, x=np.random.default_rng(seed).standard_normal((batch, seq, 32)).astype("float32"))
    return str(path)


@pytest.mark.slow
def test_flax_transformer_block_exports_with_an_open_sequence_length(tmp_path):
    import onnx
    from onnx import numpy_helper

    first = _tokens(tmp_path / "first.npz", 2, 16, seed=1)
    second = _tokens(tmp_path / "second.npz", 3, 9, seed=2)
    model = tmp_path / "block.onnx"
    done = run_convkit("export", SOURCE, "--data", first, "-o", str(model))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "note: kept static: x axis 2 (32): the model fixes it" in done.stdout
    proto = onnx.load(str(model))
    value = proto.graph.input[0]
    assert [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] == ["batch", "x_dim1", 32]

    # the check means something: two different sequences give clearly different outputs
    stored = tmp_path / "block.test_data" / "test_data_set_0" / "output_0.pb"
    output = numpy_helper.to_array(onnx.load_tensor(str(stored)))
    assert np.abs(output[0] - output[1]).max() > 1e-3 * np.abs(output).max()

    at_first = verified(model, SOURCE, first, tmp_path / "first.json")
    at_second = verified(model, SOURCE, second, tmp_path / "second.json")
    assert at_second["outputs"][0]["shape"] == [3, 9, 32]
    record(
        "jax",
        "Transformer encoder block (Flax NNX)",
        "transformer",
        "batch 2, seq 16",
        "batch 3, seq 9",
        max_abs_diff(at_first),
        max_abs_diff(at_second),
    )


def _masked_mean(x: Any, mask: Any) -> Any:
    weights = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    return (x * mask[..., None]).sum(axis=1) @ weights


def _image_mean(image: Any) -> Any:
    return image.mean(axis=(1, 2)) @ np.ones((3, 2), np.float32)


def test_axes_that_must_agree_share_one_dim_and_sized_ones_stay():
    specs = [
        InputSpec("x", ["batch", 16, 4], dynamic_if_allowed=(1, 2)),
        InputSpec("mask", ["batch", 16], dynamic_if_allowed=(1,)),
    ]
    settled, notes = dynamic.settle(_masked_mean, specs)
    assert [spec.dims for spec in settled] == [["batch", "x_dim1", 4], ["batch", "x_dim1"]]
    assert notes == ["kept static: x axis 2 (4): the model fixes it"]


def test_independent_axes_stay_independent():
    specs = [InputSpec("image", ["batch", 8, 8, 3], dynamic_if_allowed=(1, 2, 3))]
    settled, notes = dynamic.settle(_image_mean, specs)
    # two dims, not one: images need not be square
    assert settled[0].dims == ["batch", "image_dim1", "image_dim2", 3]
    assert notes == ["kept static: image axis 3 (3): the model fixes it"]
    assert dynamic.settle(_image_mean, [InputSpec("image", ["batch", 8, 8, 3])]) == (
        [InputSpec("image", ["batch", 8, 8, 3])],
        [],
    )  # sizes given with --input stay as given
