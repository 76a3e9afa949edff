"""What export and verify hold in memory: a model convkit loaded itself has its weights freed before
onnxruntime loads the export; a model the caller passed in stays whole; the exporter keeps no graph (and so no
weights) once it returned; the file written holds its weights inline."""

from __future__ import annotations

import gc

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from convkit import api  # noqa: E402
from convkit.core.inputs import parse_input_spec  # noqa: E402
from convkit.frontends import get_frontend  # noqa: E402

FACTORY = """
import sys
import types

import torch

class MemoryProbeNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(600, 600)  # 1.4 MB of weights: above the light-load threshold
        self.register_buffer("shift", torch.ones(600))
    def forward(self, x):
        return torch.relu(self.fc(x)) + self.shift

def make():
    torch.manual_seed(0)
    net = MemoryProbeNet().eval()
    # the test's window on the model convkit loads: a module it can import
    sys.modules.setdefault("memory_probe_store", types.ModuleType("memory_probe_store")).__dict__.setdefault(
        "nets", []
    ).append(net)
    return net
"""


def _probe_nets() -> list:
    import sys

    return sys.modules["memory_probe_store"].nets


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "probe_model.py"
    path.write_text(FACTORY)
    yield f"{path}:make"
    import sys

    sys.modules.pop("memory_probe_store", None)


def test_export_and_verify_free_the_weights_of_a_model_they_loaded(tmp_path, factory):
    out = tmp_path / "out" / "model.onnx"
    summary = api.export_model(factory, out, framework="torch", input_specs=[parse_input_spec("x:batch,600")])
    assert summary.report.passed
    (net,) = _probe_nets()
    assert all(p.is_meta for p in [*net.parameters(), *net.buffers()])
    # the file holds its weights: no data file beside it, nothing external inside
    assert sorted(p.name for p in out.parent.iterdir() if p.is_file()) == [
        "model.manifest.json",
        "model.onnx",
    ]
    proto = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)

    report = api.verify_model(out, factory, framework="torch")
    assert report.passed and len({c.data_set for c in report.comparisons}) == 2
    net = _probe_nets()[-1]
    assert len(_probe_nets()) == 2 and all(p.is_meta for p in net.parameters())


def test_export_native_and_verify_native_leave_the_callers_model_whole(tmp_path):
    frontend = get_frontend("torch")
    model = torch.nn.Sequential(torch.nn.Linear(600, 600), torch.nn.Tanh()).eval()
    before = [p.detach().clone() for p in model.parameters()]
    x = np.random.default_rng(0).standard_normal((2, 600)).astype(np.float32)
    out = tmp_path / "model.onnx"
    summary = api.export_native(
        frontend,
        model,
        specs=[parse_input_spec("input:batch,600")],
        example={"input": x},
        output=out,
        source="mine",
    )
    assert summary.report.passed
    report = api.verify_native(api.load_onnx(out), frontend, model, data_sets=[("x", {"input": x})])
    assert report.passed
    for param, original in zip(model.parameters(), before, strict=True):
        assert not param.is_meta
        torch.testing.assert_close(param.detach(), original, rtol=0, atol=0)  # same process, same tensor


def test_the_exporter_keeps_no_graph_once_it_returned(tmp_path):
    """onnxscript's module-level rewrite rules kept the last graph they matched, with every weight."""
    import onnx_ir as ir

    model = torch.nn.Sequential(torch.nn.Linear(600, 600), torch.nn.ReLU(), torch.nn.Linear(600, 4)).eval()
    x = np.ones((2, 600), np.float32)
    out = tmp_path / "model.onnx"
    api.export_native(
        get_frontend("torch"),
        model,
        specs=[parse_input_spec("input:batch,600")],
        example={"input": x},
        output=out,
        source="s",
    )
    gc.collect()
    alive = [g for g in gc.get_objects() if isinstance(g, ir.Graph) and len(g.initializers)]
    assert alive == []
