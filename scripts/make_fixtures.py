"""Make the framework-free fixtures under fixtures/ (reproducible: same seed, same bytes).

    .venv/bin/python scripts/make_fixtures.py

- convkit/reference/data/weights.npz: the canonical weights of the founding document's reference CNN
  (PyTorch layout: conv (O,I,kh,kw), dense (out,in)), seeded.
- convkit/reference/data/testcases/reference_cnn/: that CNN written directly with onnx.helper (opset 17,
  dynamic batch),
  with two data sets (batch 1 and 3) whose outputs come from onnx's reference implementation, not from
  onnxruntime: the bundled check is independent of the runtime it checks.
- convkit/reference/data/testcases/old_opset_mlp/: an opset-6 model (Gemm-6, BatchNormalization-6, Add-6)
  that current onnxruntime no longer implements; outputs computed with NumPy.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from convkit.core.artifacts import save_npz_atomic, write_test_data_set  # noqa: E402

SEED = 20171
DATA = ROOT / "convkit" / "reference" / "data"
CANONICAL_WEIGHTS = DATA / "weights.npz"


def reference_cnn_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """He-initialised weights, PyTorch layout, float32."""
    rng = np.random.default_rng(seed)

    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "conv1.weight": he((32, 1, 3, 3), 9),
        "conv1.bias": (rng.standard_normal(32) * 0.05).astype(np.float32),
        "conv2.weight": he((64, 32, 3, 3), 288),
        "conv2.bias": (rng.standard_normal(64) * 0.05).astype(np.float32),
        "fc1.weight": he((128, 1600), 1600),
        "fc1.bias": (rng.standard_normal(128) * 0.05).astype(np.float32),
        "fc2.weight": he((10, 128), 128),
        "fc2.bias": (rng.standard_normal(10) * 0.05).astype(np.float32),
    }


def reference_cnn_onnx(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(value, name) for name, value in weights.items()]
    nodes = [
        helper.make_node(
            "Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], kernel_shape=[3, 3], name="conv1"
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node(
            "Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], kernel_shape=[3, 3], name="conv2"
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], name="pool2"),
        helper.make_node("Flatten", ["p2"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["f1"], transB=1, name="fc1"),
        helper.make_node("Relu", ["f1"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "fc2.weight", "fc2.bias"], ["logits"], transB=1, name="fc2"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "reference_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.producer_name = "convkit-fixtures"
    onnx.checker.check_model(model, full_check=True)
    return model


def old_opset_mlp(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    w = rng.standard_normal((4, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    mean = rng.standard_normal(8).astype(np.float32)
    var = rng.uniform(0.5, 2.0, 8).astype(np.float32)
    params = {"W": w, "B": b, "scale": scale, "bias": bias, "mean": mean, "var": var}
    nodes = [
        helper.make_node("Gemm", ["x", "W", "B"], ["g"], broadcast=1),
        helper.make_node("BatchNormalization", ["g", "scale", "bias", "mean", "var"], ["bn"], is_test=1),
        helper.make_node("Add", ["bn", "B"], ["y"], broadcast=1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])] + [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape))
        for name, value in params.items()
    ]
    graph = helper.make_graph(
        nodes,
        "old_opset_mlp",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(value, name) for name, value in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)
    model.producer_name = "convkit-fixtures"
    onnx.checker.check_model(model)
    return model, params


def write_case(name: str, model: onnx.ModelProto, data_sets: list[tuple[dict, dict]]) -> None:
    case = DATA / "testcases" / name
    if case.exists():
        shutil.rmtree(case)
    case.mkdir(parents=True)
    onnx.save(model, case / "model.onnx")
    for index, (inputs, outputs) in enumerate(data_sets):
        write_test_data_set(case, inputs, outputs, index)


def main() -> None:
    weights = reference_cnn_weights()
    save_npz_atomic(CANONICAL_WEIGHTS, weights)
    cnn = reference_cnn_onnx(weights)
    oracle = ReferenceEvaluator(cnn)
    rng = np.random.default_rng(SEED)
    sets = []
    for batch in (1, 3):
        x = rng.random((batch, 1, 28, 28), dtype=np.float32)
        sets.append(({"x": x}, {"probs": oracle.run(None, {"x": x})[0]}))
    write_case("reference_cnn", cnn, sets)

    mlp, p = old_opset_mlp(rng)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    g = x.astype(np.float64) @ p["W"] + p["B"]
    bn = (g - p["mean"]) / np.sqrt(p["var"].astype(np.float64) + 1e-5) * p["scale"] + p["bias"]
    y = (bn + p["B"]).astype(np.float32)
    write_case("old_opset_mlp", mlp, [({"x": x}, {"y": y})])
    print(f"wrote {CANONICAL_WEIGHTS} and the test cases under {DATA / 'testcases'}")


if __name__ == "__main__":
    main()
