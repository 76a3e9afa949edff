"""``--html REPORT.html``: the page a user opens after a verify (or matrix, bench, quantize) run, checked as
they would check it: one self-contained file, a plot per output, the worst elements where they really are,
the first diverging node and its source; real onnxruntime (and torch) throughout.

The page in a real browser (it loads, no console errors, every plot decodes):
``tests/cli/test_html_browser.py``.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, run_convkit
from onnx import numpy_helper

from convkit.core.compare import compare_arrays
from convkit.report.plots import summarize_errors

PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The plots (``<img class=plot>``) and the table rows of an HTML report."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.plots: dict[str, dict[str, str]] = {}
        self.rows: list[list[str]] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        self.links += [v for k, v in found.items() if k in ("src", "href")]
        if tag == "img" and found.get("class") == "plot":
            self.plots[found["id"]] = found
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None


def tampered_case(source: Path, folder: Path, initializer: str = "conv1.bias") -> Path:
    """A copy of the test case ``source`` with one bias value off by 0.5 (a planted fault)."""
    shutil.copytree(source, folder)
    model = onnx.load(folder / "model.onnx")
    for tensor in model.graph.initializer:
        if tensor.name == initializer:
            value = numpy_helper.to_array(tensor).copy()
            value.flat[0] += 0.5
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    onnx.save(model, folder / "model.onnx")
    return folder


def assert_self_contained(text: str, page: Page) -> None:
    assert not [link for link in page.links if not link.startswith("data:image/png;base64,")]
    assert "http://" not in text and "https://" not in text
    for attrs in page.plots.values():
        assert base64.b64decode(attrs["src"].split(",", 1)[1]).startswith(PNG)
        assert attrs["alt"]


def test_verify_html_shows_every_output_its_worst_elements_and_the_first_divergence(cnn_case, tmp_path):
    case = tampered_case(cnn_case, tmp_path / "case")
    html, report = tmp_path / "report.html", tmp_path / "report.json"
    original = str(cnn_case / "model.onnx")
    args = ("verify", str(case), "--localize", original, "--html", str(html), "--report", str(report))
    result = run_convkit(*args)
    assert result.returncode == 1, result.stderr
    assert f"wrote {html}" in result.stdout
    text = html.read_text(encoding="utf-8")
    page = Page(text)
    assert_self_contained(text, page)
    outputs = json.loads(report.read_text())["outputs"]
    assert sorted(page.plots) == sorted(
        [f"plot-output-{k}" for k in range(len(outputs))] + ["plot-localization"]
    )
    assert "First divergence: conv1 (Conv)" in text
    # the worst element the page names is the one furthest outside the tolerance, found here independently
    import onnxruntime as ort

    data = case / "test_data_set_0"
    feed = numpy_helper.to_array(onnx.load_tensor(str(data / "input_0.pb")))
    expected = numpy_helper.to_array(onnx.load_tensor(str(data / "output_0.pb")))
    session = ort.InferenceSession(str(case / "model.onnx"), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: feed})[0]
    first = next(o for o in outputs if o["data_set"] == "test_data_set_0")
    excess = np.abs(actual - expected) - (first["atol"] + first["rtol"] * np.abs(expected))
    worst = "[" + ", ".join(str(i) for i in np.unravel_index(np.argmax(excess), expected.shape)) + "]"
    tables = [k for k, row in enumerate(page.rows) if row and row[0] == "index"]
    assert len(tables) == len(outputs)
    header = page.rows[tables[0]]
    assert header[3:5] == ["|error|", "allowed (atol + rtol·|expected|)"]
    assert page.rows[tables[0] + 1][0] == worst
    assert page.rows[tables[0] + 1][-1] == "outside"


def test_the_error_summary_counts_what_the_comparison_counts():
    rng = np.random.default_rng(0)
    expected = rng.normal(size=(4, 50)).astype(np.float32)
    actual = expected + rng.normal(scale=2e-5, size=expected.shape).astype(np.float32)
    actual[1, 7] = expected[1, 7] + 0.25  # the worst element
    actual[2, :5] = expected[2, :5]  # exact
    expected[3, 0] = actual[3, 0] = np.nan  # NaN on both sides: equal
    actual[3, 1] = np.inf  # on one side only: an infinite difference
    comparison = compare_arrays("y", expected, actual)
    summary = summarize_errors(expected, actual, comparison.atol, comparison.rtol)
    assert summary is not None
    assert summary.failing == round(comparison.mismatch_fraction * expected.size)
    assert summary.one_sided == 1 and summary.exact >= 6
    assert summary.worst[0].index == (3, 1) and summary.worst[1].index == (1, 7)
    assert sum(summary.counts) == expected.size - summary.exact - summary.one_sided
    assert summarize_errors(expected, actual[:2], 1e-5, 1e-4) is None  # shapes differ: nothing to plot
    assert summarize_errors(np.array(["a"]), np.array(["a"]), 1e-5, 1e-4) is None


def test_html_may_not_overwrite_an_input_and_is_refused_before_the_work(cnn_case, tmp_path):
    case = tmp_path / "case"
    shutil.copytree(cnn_case, case)
    before = (case / "model.onnx").read_bytes()
    refused = run_convkit("verify", str(case), "--html", str(case / "model.onnx"))
    assert refused.returncode == 2 and "--html" in refused.stderr
    assert (case / "model.onnx").read_bytes() == before
    folder = run_convkit(
        "matrix", "--frameworks", "torch", "--out-dir", str(tmp_path / "m"), "--html", str(case)
    )
    assert folder.returncode == 2 and "--html" in folder.stderr
    assert not (tmp_path / "m").exists()  # refused before any framework ran


def test_html_without_matplotlib_names_the_extra_and_writes_nothing(cnn_case, tmp_path):
    html = tmp_path / "r.html"
    # NOTE: why a None entry in sys.modules: it is how Python itself marks a module as not importable
    code = (
        "import sys\nsys.modules['matplotlib'] = None\nfrom convkit.cli import main\n"
        f"main(['verify', {str(cnn_case)!r}, '--html', {str(html)!r}])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "pip install 'convkit[html]'" in result.stderr and "Traceback" not in result.stderr
    assert not any(line.startswith("convkit: verifying") for line in lines)  # no inference ran
    assert not html.exists()


def test_matrix_bench_and_quantize_pages(cnn_case, tmp_path):
    from convkit.core.runtime import RuntimeSession, SessionOptions
    from convkit.graph.model import load_onnx
    from convkit.perf.bench import bench_model
    from convkit.quantize import quantize_model
    from convkit.reference.matrix import FrameworkResult, MatrixReport
    from convkit.report.html import render_bench_html, render_matrix_html, render_quantize_html

    matrix = MatrixReport(
        "weights.npz",
        16,
        [
            FrameworkResult("torch", "pass", 2.5e-7),
            FrameworkResult("jax", "fail", 0.2, reason="<script>alert('x')</script>"),
            FrameworkResult(
                "caffe", "unavailable", reason="no environment", install="convkit env create caffe"
            ),
        ],
        pairwise={"torch": {"torch": 0.0, "jax": 0.2}, "jax": {"torch": 0.2, "jax": 0.0}},
        pairwise_failures=["torch/jax"],
    )
    text = render_matrix_html(matrix)
    page = Page(text)
    assert list(page.plots) == ["plot-matrix"] and "<script>alert" not in text
    assert page.rows[-2][:4] == ["jax", "fail", "0.2", "<script>alert('x')</script>"]

    model = str(cnn_case / "model.onnx")
    bench = bench_model(model, (1, 2), min_seconds=0.02)
    page = Page(render_bench_html(bench))
    assert list(page.plots) == ["plot-latency-1", "plot-latency-2"]
    samples = {
        (t.contender, t.batch): [t.p10_ms / 1e3, t.median_ms / 1e3, t.p90_ms / 1e3] for t in bench.timings
    }
    assert len(Page(render_bench_html(bench, samples)).plots) == 2

    x = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    out = tmp_path / "q.onnx"
    quantized = quantize_model(model, out, "dynamic", None, tmp_path / "eval.npz", time_seconds=0.02)
    fp32 = RuntimeSession(load_onnx(model), SessionOptions(provider="cpu")).run({"x": x})
    int8 = RuntimeSession(load_onnx(out), SessionOptions(provider="cpu")).run({"x": x})
    errors = [(name, summarize_errors(fp32[name], int8[name], 1e-5, 1e-4)) for name in fp32]
    text = render_quantize_html(quantized, [(name, s) for name, s in errors if s is not None])
    page = Page(text)
    assert_self_contained(text, page)
    assert list(page.plots) == ["plot-size", "plot-speed", "plot-output-0"]


@pytest.mark.torch
def test_verify_html_against_torch_names_the_module_and_its_line(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    model = tmp_path / "mixer.onnx"
    source = "fixtures/models/torch_models.py:permute_mixer"
    exported = run_convkit("export", source, "-o", str(model), "--input", "x:batch,4,4")
    assert exported.returncode == 0, exported.stderr
    proto = onnx.load(model)
    bias = next(t for t in proto.graph.initializer if t.name == "positions.bias")
    value = numpy_helper.to_array(bias).copy()
    value.flat[0] += 0.5
    bias.CopyFrom(numpy_helper.from_array(value, bias.name))
    onnx.save(proto, model)
    html = tmp_path / "report.html"
    args = (
        "verify",
        str(model),
        "--source",
        source,
        "--input",
        "x:batch,4,4",
        "--localize",
        "--html",
        str(html),
    )
    result = run_convkit(*args)
    assert result.returncode == 1, result.stderr
    text = html.read_text(encoding="utf-8")
    assert "plot-localization" in Page(text).plots
    source_line = re.search(r"Source: <code>([^<]+)</code>", text)
    # the user's own file and line (the factory's module), not convkit's wrapper or torch's internals
    assert source_line is not None and re.search(r"torch_models\.py:\d+\)", source_line.group(1)), source_line
