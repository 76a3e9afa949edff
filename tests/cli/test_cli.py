"""The commands as a user types them (run in this interpreter by ``run_convkit``; what only a fresh process
shows, in one): output, exit codes, files left behind."""

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from conftest import ROOT, run_convkit
from onnx import numpy_helper

from convkit.cli import cli

HEAVY = ("torch", "tensorflow", "keras", "tf2onnx", "jax", "flax", "jax2onnx", "onnxruntime", "numpy", "onnx")


def _tamper(model_path, initializer="fc2.bias", delta=0.5):
    model = onnx.load(model_path)
    for tensor in model.graph.initializer:
        if tensor.name == initializer:
            value = numpy_helper.to_array(tensor).copy()
            value.flat[0] += delta
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    onnx.save(model, model_path)


@pytest.mark.parametrize("args", [[], *([name] for name in sorted(cli.commands))], ids=str)
def test_help_never_imports_a_framework(args):
    # NOTE: why a fresh interpreter: this test process has imported the frameworks already.
    code = (
        "import sys\n"
        "from convkit.cli import main\n"
        "try:\n"
        f"    main({[*args, '--help']!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "Usage:" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_version():
    result = run_convkit("--version")
    assert result.returncode == 0 and "convkit" in result.stdout


def test_inspect_text_and_json(cnn_case):
    text = run_convkit("inspect", str(cnn_case / "model.onnx"))
    assert text.returncode == 0
    assert "x     float32  [batch,1,28,28]" in text.stdout
    assert "225,034" in text.stdout
    data = json.loads(run_convkit("inspect", str(cnn_case / "model.onnx"), "--json").stdout)
    assert data["opsets"] == {"ai.onnx": 17}
    assert data["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 1, 28, 28]}]
    assert data["op_types"]["Conv"] == 2
    assert data["parameter_count"] == 225034 and data["parameter_bytes"] == 225034 * 4


def test_verify_testcase_passes(cnn_case, tmp_path):
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    result = run_convkit("verify", str(cnn_case), "--report", str(report), "--junit", str(junit))
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stdout
    data = json.loads(report.read_text())
    assert data["passed"] is True
    assert [o["data_set"] for o in data["outputs"]] == ["test_data_set_0", "test_data_set_1"]
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"


def test_verify_tampered_model_exits_1_and_reports_where(cnn_case, tmp_path):
    case = tmp_path / "case"
    shutil.copytree(cnn_case, case)
    _tamper(case / "model.onnx")
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    result = run_convkit("verify", str(case), "--report", str(report), "--junit", str(junit))
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "would pass" in result.stdout
    data = json.loads(report.read_text())
    assert data["passed"] is False
    assert all(not o["passed"] and o["max_abs_diff"] > 1e-3 for o in data["outputs"])
    # the printed numbers are the report's numbers
    assert f"{data['outputs'][0]['max_abs_diff']:.3g}" in result.stdout
    failures = ET.parse(junit).getroot().findall("testcase/failure")
    assert len(failures) == 2


def test_verify_tolerance_override(cnn_case, tmp_path):
    case = tmp_path / "case"
    shutil.copytree(cnn_case, case)
    _tamper(case / "model.onnx", delta=1e-3)
    assert run_convkit("verify", str(case)).returncode == 1
    assert run_convkit("verify", str(case), "--atol", "0.01").returncode == 0


def test_verify_old_opset_model_upgrades_and_says_so(old_opset_case):
    result = run_convkit("verify", str(old_opset_case))
    assert result.returncode == 0, result.stderr
    assert "upgraded in memory to opset 17" in result.stdout


@pytest.mark.parametrize("kind", ["npz", "npy", "folder"])
def test_run_writes_outputs(cnn_case, tmp_path, kind):
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    if kind == "npz":
        data = tmp_path / "in.npz"
        np.savez(data, x=x)
    elif kind == "npy":
        data = tmp_path / "in.npy"
        np.save(data, x)
    else:
        data = cnn_case / "test_data_set_1"
    out = tmp_path / "out.npz"
    result = run_convkit("run", str(cnn_case / "model.onnx"), "--data", str(data), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "cpu provider" in result.stdout
    with np.load(out) as outputs:
        assert list(outputs.files) == ["probs"]
        np.testing.assert_allclose(outputs["probs"].sum(axis=1), 1.0, rtol=1e-5)


def test_run_with_unavailable_cuda_is_a_clear_error(cnn_case, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    out = tmp_path / "out.npz"
    data = cnn_case / "test_data_set_0"
    result = run_convkit("run", str(cnn_case), "--data", str(data), "-o", str(out), "--provider", "cuda")
    assert result.returncode == 2
    assert "CUDA execution provider is not available" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def _assert_clean_failure(result, *phrases):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    for phrase in phrases:
        assert phrase in result.stderr


def test_bad_inputs_fail_cleanly_and_write_nothing(cnn_case, tmp_path):
    out = tmp_path / "out.npz"
    model = str(cnn_case / "model.onnx")
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes((cnn_case / "model.onnx").read_bytes()[:5000])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(1).bytes(4096))
    wrong_name, wrong_shape, wrong_dtype = tmp_path / "n.npz", tmp_path / "s.npz", tmp_path / "d.npz"
    np.savez(wrong_name, image=np.zeros((1, 1, 28, 28), np.float32))
    np.savez(wrong_shape, x=np.zeros((1, 3, 28, 28), np.float32))
    np.savez(wrong_dtype, x=np.zeros((1, 1, 28, 28), np.float64))
    good = cnn_case / "test_data_set_0"
    cases = [
        (["run", str(tmp_path / "missing.onnx"), "--data", str(good)], ["missing.onnx", "does not exist"]),
        (["run", str(truncated), "--data", str(good)], ["trunc.onnx", "truncated or corrupt"]),
        (["run", str(garbage), "--data", str(good)], ["garbage.onnx"]),
        (
            ["run", model, "--data", str(wrong_name)],
            ["unknown input(s) image", "x (float32 [batch,1,28,28])"],
        ),
        (["run", model, "--data", str(wrong_shape)], ["dimension 1 must be 1"]),
        (["run", model, "--data", str(wrong_dtype)], ["float64", "astype('float32')"]),
        (["run", model, "--data", str(tmp_path / "none.npz")], ["none.npz", "does not exist"]),
    ]
    for args, phrases in cases:
        _assert_clean_failure(run_convkit(*args, "-o", str(out)), *phrases)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_verify_missing_test_data(tmp_path, cnn_case):
    shutil.copy(cnn_case / "model.onnx", tmp_path / "model.onnx")
    report = tmp_path / "r.json"
    result = run_convkit("verify", str(tmp_path / "model.onnx"), "--report", str(report))
    _assert_clean_failure(result, "no test_data_set_N")
    # the report says why, for the CI job that reads it (and nothing else is written)
    found = json.loads(report.read_text())
    assert found["passed"] is False and "no test_data_set_N" in found["error"]["message"]


def test_debug_shows_the_traceback(tmp_path):
    result = run_convkit("--debug", "inspect", str(tmp_path / "missing.onnx"))
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "InputFileError" in result.stderr


def test_usage_errors_exit_2():
    assert run_convkit("verify").returncode == 2
    assert run_convkit("no-such-command").returncode == 2
    assert run_convkit("run", "m.onnx", "--data", "d.npz", "-o", "o.npz", "--provider", "tpu").returncode == 2


def test_unknown_framework_lists_choices(cnn_case):
    result = run_convkit("verify", str(cnn_case), "--source", "m.py:f", "--framework", "caffe9")
    _assert_clean_failure(result, "unknown framework 'caffe9'", "torch", "tensorflow")


def test_bench_prints_table_and_writes_json(cnn_case, tmp_path):
    out = tmp_path / "bench.json"
    model = str(cnn_case / "model.onnx")
    result = run_convkit("bench", model, "--batch-sizes", "1,2", "--seconds", "0.05", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "MFLOP per sample" in result.stdout and "convkit (onnxruntime)" in result.stdout
    data = json.loads(out.read_text())
    assert [t["batch"] for t in data["timings"]] == [1, 1, 2, 2]
    assert data["peak"]["measured_gflops"] > 0
    bad = run_convkit("bench", model, "--batch-sizes", "one")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_quantize_gate_from_the_command_line(cnn_case, tmp_path):
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32))
    out = tmp_path / "q.onnx"
    model = str(cnn_case / "model.onnx")
    ok = run_convkit("quantize", model, "-o", str(out), "--calibration", str(data))
    assert ok.returncode == 0, ok.stderr
    assert "top-1 agreement" in ok.stdout and out.exists()
    out.unlink()
    strict = run_convkit(
        "quantize", model, "-o", str(out), "--fp16", "--eval-data", str(data), "--min-top1", "1.5"
    )
    assert strict.returncode == 1 and "not written" in strict.stdout
    assert not out.exists()


def test_verify_localize_puts_the_divergence_in_the_report(cnn_case, tmp_path):
    case = tmp_path / "case"
    shutil.copytree(cnn_case, case)
    _tamper(case / "model.onnx", initializer="conv1.bias")
    report = tmp_path / "r.json"
    original = str(cnn_case / "model.onnx")
    result = run_convkit("verify", str(case), "--localize", original, "--report", str(report))
    assert result.returncode == 1
    assert "node 'conv1' (Conv)" in result.stdout
    first = json.loads(report.read_text())["localization"]["first_divergence"]
    assert first["node"] == "conv1" and first["op_type"] == "Conv"
    plain = run_convkit("verify", str(case))
    assert "rerun with --localize" in plain.stdout
    repro = tmp_path / "repro"
    data = str(case / "test_data_set_0")
    reduced = run_convkit(
        "reduce", str(case / "model.onnx"), "--data", data, "-o", str(repro), "--oracle", original
    )
    assert reduced.returncode == 0, reduced.stderr
    assert run_convkit("verify", str(repro)).returncode == 1


def test_verify_several_runtime_configurations_in_one_report(cnn_case, tmp_path):
    report = tmp_path / "r.json"
    result = run_convkit("verify", str(cnn_case), "--optimization", "all,disabled", "--report", str(report))
    assert result.returncode == 0, result.stderr
    outputs = json.loads(report.read_text())["outputs"]
    assert [(o["runtime"], o["data_set"]) for o in outputs] == [
        ("cpu/all", "test_data_set_0"),
        ("cpu/all", "test_data_set_1"),
        ("cpu/disabled", "test_data_set_0"),
        ("cpu/disabled", "test_data_set_1"),
    ]
    bad = run_convkit("verify", str(cnn_case), "--providers", "cpu,tpu")
    assert bad.returncode == 2 and "choose from auto, cpu, cuda" in bad.stderr


def test_verify_with_cuda_in_the_list_says_when_it_is_unavailable(cnn_case):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    result = run_convkit("verify", str(cnn_case), "--providers", "cpu,cuda")
    _assert_clean_failure(result, "CUDA execution provider is not available")
