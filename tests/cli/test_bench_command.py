"""``convkit bench`` records what it measured on, and takes the options perf tools take."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import onnxruntime

from tests.conftest import TESTCASES, run_convkit

MODEL = str(TESTCASES / "reference_cnn" / "model.onnx")


def test_bench_on_given_data_records_percentiles_versions_cpu_and_time(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32))
    out = tmp_path / "bench.json"
    done = run_convkit(
        "bench", MODEL, "--data", str(tmp_path / "x.npz"), "--provider", "cpu", "--seconds", "0.05",
        "--warmup", "2", "--iterations", "7", "--json", str(out), "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(out.read_text())
    assert {t["batch"] for t in found["timings"]} == {3}
    for timing in found["timings"]:
        assert timing["calls"] >= 7
        assert 0 < timing["median_ms"] <= timing["p90_ms"] <= timing["p99_ms"]
    assert found["onnxruntime"] == onnxruntime.__version__ and found["provider"] == "cpu"
    assert found["cpu_model"] and (found["warmup"], found["min_calls"]) == (2, 7)
    started = datetime.datetime.fromisoformat(found["timestamp"])
    assert abs((datetime.datetime.now(datetime.UTC) - started).total_seconds()) < 600
    header = done.stdout.splitlines()
    assert "p50 ms" in done.stdout and "p99 ms" in done.stdout and "time / convkit" in done.stdout
    assert any(line.startswith("time / convkit: ") for line in header)
    assert f"onnxruntime {onnxruntime.__version__} (cpu)" in done.stdout


def test_cuda_where_onnxruntime_has_none_is_one_line(tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return  # the GPU build: nothing to refuse
    done = run_convkit("bench", MODEL, "--provider", "cuda", "--seconds", "0.05")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "CUDA execution provider is not available" in errors[0]


def test_data_and_batch_sizes_together_are_a_usage_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 1, 28, 28), dtype=np.float32))
    done = run_convkit("bench", MODEL, "--data", str(tmp_path / "x.npz"), "--batch-sizes", "1,4")
    assert done.returncode == 2 and "--batch-sizes" in done.stderr and "Traceback" not in done.stderr
