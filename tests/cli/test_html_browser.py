"""The HTML report opened in a real browser (headless Chromium, from the system's packages): the page loads
with no console message at all (no script error, no blocked network load), and every plot on it decodes.

The page marks ``data-plots-loaded`` on ``<body>`` after its load event (``convkit/report/html.py``); the
DOM Chromium dumps after loading shows it. A screenshot of each page lands in the test's tmp folder.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
from conftest import run_convkit
from onnx import numpy_helper

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((found for name in BROWSERS if (found := shutil.which(name))), None)

pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium here (Debian/Ubuntu: apt-get install -y chromium)"
)


def open_in_browser(page: Path, tmp_path: Path) -> tuple[str, list[str], Path]:
    """Load ``page`` in headless Chromium: the DOM after the load event, the console's messages and a
    screenshot of the first 1200x3000 pixels."""
    assert BROWSER is not None
    screenshot = tmp_path / f"{page.stem}.png"
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",  # NOTE: why: CI containers run as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-extensions",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1200,3000",
        f"--screenshot={screenshot}",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    print(f"screenshot of {page.name}: {screenshot}")
    return done.stdout, console, screenshot


def plots_in(dom: str) -> tuple[int, int, int]:
    """(plots on the page, plots the page counted, plots that decoded) from the dumped DOM."""
    expected = re.search(r'data-plots-expected="(\d+)"', dom)
    loaded = re.search(r'data-plots-loaded="(\d+)"', dom)
    assert expected and loaded, "the page's load script did not run"
    return len(re.findall(r'<img class="plot"', dom)), int(expected.group(1)), int(loaded.group(1))


def test_the_verify_report_loads_in_chromium_with_every_plot(cnn_case, tmp_path):
    case = tmp_path / "case"
    shutil.copytree(cnn_case, case)
    model = onnx.load(case / "model.onnx")
    bias = next(t for t in model.graph.initializer if t.name == "conv1.bias")
    value = numpy_helper.to_array(bias).copy()
    value.flat[0] += 0.5  # a planted fault
    bias.CopyFrom(numpy_helper.from_array(value, bias.name))
    onnx.save(model, case / "model.onnx")
    page = tmp_path / "verify.html"
    original = str(cnn_case / "model.onnx")
    result = run_convkit("verify", str(case), "--localize", original, "--html", str(page))
    assert result.returncode == 1, result.stderr
    dom, console, screenshot = open_in_browser(page, tmp_path)
    assert console == []
    # two data sets of one output, and the localization along the graph
    assert plots_in(dom) == (3, 3, 3)
    assert 'id="plot-localization"' in dom and "First divergence: conv1 (Conv)" in dom
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 50_000


def matrix_page() -> str:
    from convkit.reference.matrix import FrameworkResult, MatrixReport
    from convkit.report.html import render_matrix_html

    report = MatrixReport(
        "weights.npz",
        8,
        [FrameworkResult("torch", "pass", 2.5e-7), FrameworkResult("jax", "pass", 3.1e-7)],
        pairwise={"torch": {"torch": 0.0, "jax": 3e-7}, "jax": {"torch": 3e-7, "jax": 0.0}},
    )
    return render_matrix_html(report)


def test_the_matrix_report_loads_in_chromium_with_its_heatmap(tmp_path):
    page = tmp_path / "matrix.html"
    page.write_text(matrix_page(), encoding="utf-8")
    dom, console, _ = open_in_browser(page, tmp_path)
    assert console == []
    assert plots_in(dom) == (1, 1, 1)


def test_the_browser_check_sees_a_broken_page(tmp_path):
    # NOTE: why: a check that never fails proves nothing; the same page with a script error, a network
    # load and an image that does not decode must show up in the console and in the plot count
    page = tmp_path / "broken.html"
    broken = (
        '<img class="plot" id="plot-bad" alt="bad" src="data:image/png;base64,AAAA">'
        "<script>throw new Error('boom')</script><img src='https://example.invalid/x.png'></body>"
    )
    page.write_text(matrix_page().replace("</body>", broken), encoding="utf-8")
    dom, console, _ = open_in_browser(page, tmp_path)
    assert any("boom" in line for line in console)
    assert any("example.invalid" in line for line in console)  # refused by the page's own policy
    assert plots_in(dom) == (2, 2, 1)
