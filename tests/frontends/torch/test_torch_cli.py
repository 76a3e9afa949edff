"""The torch workflow as a user types it: ``convkit export`` / ``convkit verify``, in fresh processes for the
first test (the installed script, end to end) and in this interpreter for the others."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_convkit
from onnx import numpy_helper

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[3]
SOURCE = "fixtures/models/torch_models.py:reference_cnn"


def convkit(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``convkit ARGS`` from the repo root in this interpreter (``conftest.run_convkit``)."""
    return run_convkit(*args, timeout=300)


def side_by_side(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run several independent ``convkit`` commands (in this interpreter, one after the other); their
    results in order."""
    return [convkit(*args) for args in commands]


def convkit_process(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``convkit`` script (``python -m convkit`` where there is none) from the repo root."""
    return processes_side_by_side(list(args))[0]


def processes_side_by_side(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run several independent ``convkit`` commands at once, each in a fresh process (as
    :func:`convkit_process` does one); their results in order.

    NOTE: why: each command spends most of its seconds starting (importing torch), so commands that do not
    depend on each other take little more together than one alone.
    """
    script = Path(sys.executable).with_name("convkit")
    prefix = [str(script)] if script.is_file() else [sys.executable, "-m", "convkit"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    running = [
        subprocess.Popen(
            [*prefix, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in commands
    ]
    done = []
    for args, process in zip(commands, running, strict=True):
        try:
            stdout, stderr = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for other in running:
                other.kill()
            raise
        done.append(subprocess.CompletedProcess([*prefix, *args], process.returncode, stdout, stderr))
    return done


def tamper(path: Path) -> None:
    """Change one weight of the last layer (the 1-D initializer of 10 values: the classifier's bias)."""
    model = onnx.load(str(path))
    (bias,) = [t for t in model.graph.initializer if list(t.dims) == [10]]
    value = numpy_helper.to_array(bias).copy()
    value[0] += 1.0
    bias.CopyFrom(numpy_helper.from_array(value, bias.name))
    onnx.save(model, str(path))


def test_export_then_verify_against_torch_then_catch_a_tampered_model(tmp_path):
    # NOTE: why fresh processes: this framework's one end-to-end run of the installed script.
    out = tmp_path / "out" / "model.onnx"
    exported = convkit_process("export", SOURCE, "-o", str(out), "--input", "x:batch,1,28,28")
    assert exported.returncode == 0, exported.stderr
    assert "with dynamo" in exported.stdout and "PASS" in exported.stdout
    assert "[torch.onnx]" not in exported.stdout + exported.stderr  # the exporter's progress lines
    assert "torchvision" not in exported.stderr
    manifest = json.loads((tmp_path / "out" / "model.manifest.json").read_text())
    assert manifest["exporter"] == "dynamo" and manifest["inputs"][0]["shape"] == ["batch", 1, 28, 28]
    assert manifest["versions"]["torch"] == torch.__version__

    tampered = tmp_path / "tampered.onnx"
    shutil.copyfile(out, tampered)
    tamper(tampered)
    verified, failed = processes_side_by_side(
        ["verify", str(out), "--source", SOURCE, "--framework", "torch"],
        ["verify", str(tampered), "--source", SOURCE, "--framework", "torch"],
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "batch=1" in verified.stdout and "batch=3" in verified.stdout
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAIL" in failed.stdout


def test_pt2_file_exports_without_input_options_and_keeps_its_dynamic_batch(tmp_path):
    program = torch.export.export(
        _reference_cnn(), (torch.randn(2, 1, 28, 28),), dynamic_shapes={"x": {0: torch.export.Dim("n")}}
    )
    pt2 = tmp_path / "cnn.pt2"
    torch.export.save(program, str(pt2))
    out = tmp_path / "model.onnx"
    exported = convkit("export", str(pt2), "-o", str(out))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "x:batch,1,28,28:float32" in exported.stdout
    verified = convkit("verify", str(out), "--source", str(pt2))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_weights_and_pickles_from_the_command_line(tmp_path):
    model = _reference_cnn()
    with torch.no_grad():
        model.fc2.bias[0] += 1.0  # one logit: a shift of all of them would leave the softmax unchanged
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"epoch": 1, "model": model.state_dict()}, checkpoint)
    out = tmp_path / "w" / "model.onnx"
    args = ["--input", "x:batch,1,28,28", "--weights", str(checkpoint)]
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), whole)
    exported, refused, allowed = side_by_side(
        ["export", SOURCE, "-o", str(out), *args],
        ["export", str(whole), "-o", str(tmp_path / "p" / "model.onnx"), "--input", "input:batch,4"],
        [
            "export", str(whole), "-o", str(tmp_path / "a" / "model.onnx"), "--input", "input:batch,4",
            "--unsafe-allow-pickle",
        ],
    )  # fmt: skip
    assert exported.returncode == 0, exported.stdout + exported.stderr
    onnx_bias = [
        numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer if list(t.dims) == [10]
    ]
    np.testing.assert_array_equal(onnx_bias[0], model.fc2.bias.detach().numpy())
    # the checkpoint is part of the source: verifying without it fails, with it passes
    with_weights, without = side_by_side(
        ["verify", str(out), "--source", SOURCE, "--weights", str(checkpoint)],
        ["verify", str(out), "--source", SOURCE],
    )
    assert with_weights.returncode == 0, with_weights.stdout + with_weights.stderr
    assert without.returncode == 1, without.stdout + without.stderr

    assert refused.returncode == 2
    assert "pickled" in refused.stderr and "--unsafe-allow-pickle" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "p" / "model.onnx").exists()
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_fallback_and_forced_exporters_from_the_command_line(tmp_path):
    source = "fixtures/models/torch_models.py:data_dependent_branch"
    out = tmp_path / "model.onnx"
    exported, forced = side_by_side(
        ["export", source, "-o", str(out), "--input", "x:batch,4"],
        ["export", source, "-o", str(tmp_path / "f.onnx"), "--input", "x:batch,4", "--exporter", "dynamo"],
    )
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "with torchscript" in exported.stdout
    assert "torch.export could not capture the model" in exported.stdout
    assert forced.returncode == 2
    assert "error: the torch.export-based exporter failed" in forced.stderr
    assert "Traceback" not in forced.stderr


def _reference_cnn() -> torch.nn.Module:
    from convkit.core.sources import load_factory

    return load_factory(str(ROOT / SOURCE))
