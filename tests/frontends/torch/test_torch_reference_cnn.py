"""The reference CNN in PyTorch (``TorchFrontend.reference_cnn`` / ``train_reference_cnn``) with real torch,
onnxruntime and, where installed, Keras: canonical weights compute the framework-free test case; weights
trained by ``convkit train --framework torch`` give Keras the same predictions, and ``convkit matrix`` agrees.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TESTCASES, run_convkit

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from convkit.core.artifacts import list_test_data_sets, read_test_data_set  # noqa: E402
from convkit.core.inputs import InputSpec  # noqa: E402
from convkit.core.runtime import RuntimeSession, SessionOptions  # noqa: E402
from convkit.core.sources import load_factory  # noqa: E402
from convkit.errors import DataError  # noqa: E402
from convkit.frontends import ExportOptions  # noqa: E402
from convkit.frontends.torch import TorchFrontend  # noqa: E402
from convkit.graph.model import load_onnx  # noqa: E402
from convkit.reference.cnn import SHAPES, load_digits, load_weights  # noqa: E402

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[3]
CASE = TESTCASES / "reference_cnn"
SPEC = InputSpec("x", ["batch", 1, 28, 28], "float32")
TRAIN_EPOCHS = 2
HAS_TENSORFLOW = all(importlib.util.find_spec(p) is not None for p in ("tensorflow", "keras", "tf2onnx"))
needs_tensorflow = pytest.mark.skipif(
    not HAS_TENSORFLOW, reason="TensorFlow is not installed (pip install 'convkit[tensorflow]')"
)


@pytest.fixture(scope="module")
def frontend() -> TorchFrontend:
    return TorchFrontend()


def test_reference_cnn_from_canonical_weights_exports_to_the_framework_free_testcase(frontend, tmp_path):
    """The front end's reference CNN (what `convkit matrix` and `convkit train` build) with the canonical
    weights, exported and run in onnxruntime, gives the stored outputs of the reference_cnn test
    case within 1e-5; so does torch itself."""
    assert frontend.reference_layout == "NCHW"
    model = frontend.reference_cnn(load_weights())
    assert not model.training
    assert frontend.input_names(model) == ["x"]
    fixture = load_factory(f"{ROOT / 'fixtures' / 'models' / 'torch_models.py'}:reference_cnn")
    assert type(fixture) is type(model), "one ReferenceCNN definition"
    path = tmp_path / "model.onnx"
    frontend.export(model, [SPEC], {"x": np.zeros((2, 1, 28, 28), np.float32)}, path, ExportOptions())
    session = RuntimeSession(load_onnx(path), SessionOptions(provider="cpu"))
    folders = list_test_data_sets(CASE)
    assert folders
    for folder in folders:
        inputs, outputs = read_test_data_set(folder, ["x"], ["probs"])
        (onnx_probs,) = session.run(inputs).values()
        (torch_probs,) = frontend.run(model, inputs)
        onnx_diff = float(np.abs(onnx_probs - outputs["probs"]).max())
        torch_diff = float(np.abs(torch_probs - outputs["probs"]).max())
        assert onnx_diff <= 1e-5 and torch_diff <= 1e-5, (folder.name, onnx_diff, torch_diff)
        print(f"{folder.name}: onnx {onnx_diff:.3g}, torch {torch_diff:.3g} from the framework-free outputs")


def test_reference_cnn_refuses_weights_that_do_not_fit(frontend):
    weights = load_weights()
    weights["fc1.weight"] = weights["fc1.weight"][:, :100]
    with pytest.raises(DataError, match="fc1.weight"):
        frontend.reference_cnn(weights)
    del weights["fc1.weight"]
    with pytest.raises(DataError, match="fc1.weight"):
        frontend.reference_cnn(weights)


def test_training_on_a_subset_is_sane_and_seeded(frontend):
    """Two epochs on 400 digits: progress each epoch, canonical shapes, better than chance, reproducible,
    and torch's thread setting left as it was."""
    x_train, y_train, x_test, y_test = load_digits()
    data = (x_train[:400], y_train[:400], x_test[:200], y_test[:200])
    seen: list[tuple[int, int, dict[str, float]]] = []
    threads = torch.get_num_threads()
    # NOTE: why one thread: the assertions below hold the loop to the thread count it was given (it never
    # uses more than torch is set to), and one thread keeps this test's time the same on any machine.
    torch.set_num_threads(1)
    try:
        weights = frontend.train_reference_cnn(data, 2, 7, lambda e, n, m: seen.append((e, n, m)))
        assert torch.get_num_threads() == 1
        again = frontend.train_reference_cnn(data, 2, 7, lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    assert [(e, n) for e, n, _ in seen] == [(1, 2), (2, 2)]
    assert all(set(m) == {"loss", "accuracy", "val_accuracy"} for _, _, m in seen)
    assert seen[-1][2]["loss"] < seen[0][2]["loss"]
    assert {name: w.shape for name, w in weights.items()} == SHAPES
    assert all(w.dtype == np.float32 for w in weights.values())
    (probs,) = frontend.run(frontend.reference_cnn(weights), {"x": x_test[:200]})
    accuracy = float((probs.argmax(-1) == y_test[:200]).mean())
    assert accuracy > 0.3, accuracy  # chance is 0.1
    assert accuracy == pytest.approx(seen[-1][2]["val_accuracy"])
    for name in SHAPES:
        np.testing.assert_array_equal(again[name], weights[name])
    print(f"2 epochs on 400 digits: test accuracy {accuracy:.3f}")


# ------------------------------------------------------------------ trained in torch, checked everywhere
class Background:
    """A ``convkit ARGS`` command, run in this interpreter when its result is first read (``result()``)."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.done: subprocess.CompletedProcess[str] | None = None

    def result(self) -> subprocess.CompletedProcess[str]:
        if self.done is None:
            self.done = run_convkit(*self.args, cwd=ROOT, timeout=300)
        return self.done


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> dict[str, Any]:
    """`convkit train --framework torch`, and `convkit matrix --frameworks torch,tensorflow` on its weights
    once it is done (``matrix``, added by ``trained``); each runs when a test first reads its result."""
    folder = tmp_path_factory.mktemp("trained")
    weights = folder / "w.npz"
    started: dict[str, Any] = {"folder": folder, "weights": weights}
    started["train"] = Background(
        "train", "--framework", "torch", "--epochs", str(TRAIN_EPOCHS), "-o", str(weights)
    )
    return started


@pytest.fixture(scope="module")
def trained(commands) -> tuple[Path, float]:
    """The weights `convkit train --framework torch` wrote, and the test accuracy it printed."""
    done = commands["train"].result()
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"torch: (\d+) epochs in ([\d.]+) s, test accuracy ([\d.]+)", done.stdout)
    assert match, done.stdout
    print(f"convkit train --framework torch: {done.stdout.strip()}")
    if HAS_TENSORFLOW and "matrix" not in commands:
        folder = commands["folder"]
        commands["matrix"] = Background(
            "matrix", "--frameworks", "torch,tensorflow", "--weights", str(commands["weights"]),
            "--out-dir", str(folder / "matrix"), "--json", str(folder / "matrix.json"), "--samples", "360",
        )  # fmt: skip
    return commands["weights"], float(match.group(3))


def test_cli_train_writes_canonical_weights_torch_classifies_with(frontend, trained):
    weights_path, printed = trained
    weights = load_weights(weights_path)
    assert {name: w.shape for name, w in weights.items()} == SHAPES
    _, _, x_test, y_test = load_digits()
    (probs,) = frontend.run(frontend.reference_cnn(weights), {"x": x_test})
    accuracy = float((probs.argmax(-1) == y_test).mean())
    assert accuracy == pytest.approx(printed, abs=1e-4)
    assert accuracy >= 0.85, f"{TRAIN_EPOCHS} epochs reach about 0.93 here (10 epochs: about 0.99)"


@needs_tensorflow
def test_trained_in_torch_keras_from_the_same_weights_predicts_the_same(frontend, trained):
    """Train in PyTorch, and the Keras model built from the same weights (NHWC, converted kernels) gives
    the same predictions on every held-out digit."""
    from convkit.frontends.tensorflow import TensorFlowFrontend

    keras_frontend = TensorFlowFrontend()
    reason = keras_frontend.is_available()
    if reason is not None:
        pytest.skip(f"TensorFlow front end unavailable: {reason}")
    weights = load_weights(trained[0])
    _, _, x_test, _ = load_digits()
    (torch_probs,) = frontend.run(frontend.reference_cnn(weights), {"x": x_test})
    nhwc = np.ascontiguousarray(x_test.transpose(0, 2, 3, 1))
    (keras_probs,) = keras_frontend.run(keras_frontend.reference_cnn(weights), {"x": nhwc})
    agreement = float((torch_probs.argmax(-1) == keras_probs.argmax(-1)).mean())
    diff = float(np.abs(torch_probs - keras_probs).max())
    print(f"{len(x_test)} digits: argmax agreement {agreement:.2%}, max abs probability diff {diff:.3g}")
    assert agreement == 1.0
    assert diff < 1e-5


@needs_tensorflow
def test_cli_matrix_torch_and_tensorflow_agree_on_the_trained_weights(commands, trained):
    done = commands["matrix"].result()
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((commands["folder"] / "matrix.json").read_text())
    rows = {row["framework"]: row for row in result["frameworks"]}
    assert rows["torch"]["status"] == "pass" and rows["torch"]["exporter"] == "dynamo", rows
    assert rows["tensorflow"]["status"] == "pass", rows
    pairwise = result["pairwise_max_abs_diff"]["torch"]["tensorflow"]
    assert pairwise < 1e-5 and result["pairwise_failures"] == []
    assert result["samples"] == 360  # the whole held-out set
    out = commands["folder"] / "matrix"
    assert all((out / name / "model.onnx").is_file() for name in ("torch", "tensorflow"))
    print(
        f"matrix: torch vs native {rows['torch']['max_abs_diff']:.3g}, tensorflow vs native "
        f"{rows['tensorflow']['max_abs_diff']:.3g}, torch vs tensorflow {pairwise:.3g}"
    )
