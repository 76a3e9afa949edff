"""The JAX workflow as a user types it: ``convkit export`` / ``verify`` of Flax NNX modules and a plain JAX
function (the exports of the first test in fresh processes, the rest in this interpreter), a usage error,
``convkit train --framework jax`` and ``convkit matrix``."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import run_convkit
from onnx import numpy_helper

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("jax2onnx")

from convkit.reference.cnn import SHAPES, load_digits, load_weights

pytestmark = pytest.mark.jax

ROOT = Path(__file__).resolve().parents[3]
MODELS = "fixtures/models/jax_models.py"
TRAIN_EPOCHS = 2
HAS_TORCH = (
    importlib.util.find_spec("torch") is not None and importlib.util.find_spec("onnxscript") is not None
)
needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="PyTorch is not installed (pip install 'convkit[torch]')"
)


class Convkit:
    """A ``python -m convkit ARGS`` process started now and collected later (``result()``).

    NOTE: why processes that overlap: each command spends most of its seconds starting (importing JAX and
    onnxruntime), so independent commands take little more together than one alone.
    """

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.command = [sys.executable, "-m", "convkit", *args]
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.done: subprocess.CompletedProcess[str] | None = None

    def result(self) -> subprocess.CompletedProcess[str]:
        if self.done is None:
            try:
                stdout, stderr = self.process.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
            self.done = subprocess.CompletedProcess(self.command, self.process.returncode, stdout, stderr)
        return self.done


class Later:
    """A ``convkit ARGS`` command, run in this interpreter when its result is first read (``result()``)."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.done: subprocess.CompletedProcess[str] | None = None

    def result(self) -> subprocess.CompletedProcess[str]:
        if self.done is None:
            self.done = run_convkit(*self.args, timeout=300)
        return self.done


def side_by_side(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent ``convkit`` commands in this interpreter, one after the other; their results in
    order."""
    return [run_convkit(*args, timeout=300) for args in commands]


def tamper(path: Path, width: int) -> None:
    """Add 1 to the first value of the classifier's bias (the one 1-D initializer of ``width`` values)."""
    model = onnx.load(str(path))
    (bias,) = [t for t in model.graph.initializer if list(t.dims) == [width]]
    value = numpy_helper.to_array(bias).copy()
    value[0] += 1.0
    bias.CopyFrom(numpy_helper.from_array(value, bias.name))
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def background(tmp_path_factory) -> dict[str, Any]:
    """`convkit train --framework jax` and `convkit matrix --frameworks jax,torch`, each run (in this
    interpreter) when a test first reads its result."""
    folder = tmp_path_factory.mktemp("jax-background")
    started: dict[str, Any] = {"folder": folder, "weights": folder / "w.npz"}
    started["train"] = Later(
        "train", "--framework", "jax", "--epochs", str(TRAIN_EPOCHS), "-o", str(started["weights"])
    )
    if HAS_TORCH:
        started["matrix"] = Later(
            "matrix", "--frameworks", "jax,torch", "--out-dir", str(folder / "matrix"),
            "--json", str(folder / "matrix.json"),
        )  # fmt: skip
    return started


SOURCES = {
    "mlp": (f"{MODELS}:mlp_layernorm", "x:batch,16"),
    "conv": (f"{MODELS}:conv_batchnorm", "x:batch,12,12,3"),
    "function": (f"{MODELS}:plain_function", "x:batch,6"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Any]:
    """Every export of this module: the two NNX modules, the plain function (with and without ``--framework
    jax``) and a factory that makes no model; name -> (model path, finished process).

    NOTE: why the first three in fresh processes, side by side: the first test is this framework's end-to-end
    run of ``python -m convkit``; the two usage errors run in this interpreter meanwhile.
    """
    folder = tmp_path_factory.mktemp("jax-export")
    commands: dict[str, tuple[Path, list[str]]] = {}
    for name, (source, spec) in SOURCES.items():
        out = folder / name / "model.onnx"
        commands[name] = (out, ["export", source, "-o", str(out), "--input", spec, "--framework", "jax"])
    commands["mlp"][1].remove("--framework")  # an NNX module's framework is inferred
    commands["mlp"][1].remove("jax")
    guess = folder / "guess.onnx"
    commands["guess"] = (guess, ["export", SOURCES["function"][0], "-o", str(guess), "--input", "x:batch,6"])
    wrong = folder / "wrong.onnx"
    commands["wrong"] = (
        wrong,
        ["export", f"{MODELS}:not_a_model", "-o", str(wrong), "--input", "x:batch,2", "--framework", "jax"],
    )
    started = {name: Convkit(*commands[name][1]) for name in SOURCES}
    results = {
        name: run_convkit(*args, timeout=300) for name, (_, args) in commands.items() if name not in started
    }
    results.update({name: command.result() for name, command in started.items()})
    return {name: (path, results[name]) for name, (path, _) in commands.items()}


def test_export_nnx_modules_and_a_plain_function_quietly(exported):
    for name in SOURCES:
        out, done = exported[name]
        assert done.returncode == 0, done.stdout + done.stderr
        assert "with jax2onnx" in done.stdout and "PASS" in done.stdout
        assert done.stderr == "", done.stderr  # quiet: no JAX, jax2onnx or onnxruntime chatter
        manifest = json.loads(out.with_name("model.manifest.json").read_text())
        assert manifest["framework"] == "jax" and manifest["inputs"][0]["shape"][0] == "batch"
        assert {"jax", "flax", "jax2onnx"} <= set(manifest["versions"])


def test_verify_at_two_batch_sizes_and_catch_a_tampered_copy(exported, tmp_path):
    tampered = tmp_path / "tampered.onnx"
    shutil.copyfile(exported["conv"][0], tampered)
    tamper(tampered, 5)
    commands = [
        ["verify", str(exported[name][0]), "--source", source, "--framework", "jax"]
        for name, (source, _) in SOURCES.items()
    ]
    commands.append(["verify", str(tampered), "--source", SOURCES["conv"][0], "--framework", "jax"])
    *verified, failed = side_by_side(*commands)
    for done in verified:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "batch=1" in done.stdout and "batch=3" in done.stdout
        assert done.stderr == "", done.stderr
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAIL" in failed.stdout


def test_a_plain_function_needs_framework_jax(exported):
    out, done = exported["guess"]
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--framework" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_a_factory_that_makes_no_model_is_a_one_line_usage_error(exported):
    out, done = exported["wrong"]
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "not a JAX model" in lines[0], done.stderr
    assert all(line.startswith(("error: ", "hint: ")) for line in lines), done.stderr
    assert not out.exists()


def test_cli_train_writes_weights_torch_classifies_every_digit_alike(background):
    """`convkit train --framework jax`: canonical weights, the accuracy it printed, and the PyTorch reference
    CNN built from the same weights predicts the same class for every held-out digit."""
    done = background["train"].result()
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"jax: (\d+) epochs in ([\d.]+) s, test accuracy ([\d.]+)", done.stdout)
    assert match, done.stdout
    print(f"convkit train --framework jax: {done.stdout.strip()}")
    weights = load_weights(background["weights"])
    assert {name: w.shape for name, w in weights.items()} == SHAPES
    _, _, x_test, y_test = load_digits()
    from convkit.frontends.jax import JaxFrontend

    jax_frontend = JaxFrontend()
    nhwc = np.ascontiguousarray(x_test.transpose(0, 2, 3, 1))
    (jax_probs,) = jax_frontend.run(jax_frontend.reference_cnn(weights), {"x": nhwc})
    accuracy = float((jax_probs.argmax(-1) == y_test).mean())
    assert accuracy == pytest.approx(float(match.group(3)), abs=1e-4)
    assert accuracy >= 0.85, f"{TRAIN_EPOCHS} epochs reach about 0.98 here"
    if not HAS_TORCH:
        pytest.skip("PyTorch is not installed: the cross-check needs it")
    from convkit.frontends.torch import TorchFrontend

    torch_frontend = TorchFrontend()
    (torch_probs,) = torch_frontend.run(torch_frontend.reference_cnn(weights), {"x": x_test})
    agreement = float((torch_probs.argmax(-1) == jax_probs.argmax(-1)).mean())
    diff = float(np.abs(torch_probs - jax_probs).max())
    print(f"torch vs jax on {len(x_test)} digits: argmax agreement {agreement:.4f}, max abs diff {diff:.3g}")
    assert agreement == 1.0 and diff <= 1e-4


@needs_torch
def test_cli_matrix_jax_and_torch_agree(background):
    done = background["matrix"].result()
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((background["folder"] / "matrix.json").read_text())
    rows = {row["framework"]: row for row in report["frameworks"]}
    assert rows["jax"]["status"] == "pass" and rows["torch"]["status"] == "pass", rows
    assert rows["jax"]["max_abs_diff"] <= 1e-5
    between = report["pairwise_max_abs_diff"]["jax"]["torch"]
    print(f"matrix: jax vs its ONNX {rows['jax']['max_abs_diff']:.3g}, jax vs torch (ONNX) {between:.3g}")
    assert between <= 1e-5
