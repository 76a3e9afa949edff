"""PyTorch modules paired with ONNX values (``TorchFrontend.layer_outputs``) and ``convkit verify --localize``
against torch itself, with real torch and onnxruntime: faithful exports localize to nothing, planted faults to
the module (or functional call) they sit in."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_convkit
from onnx import numpy_helper

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from convkit.core.compare import compare_arrays  # noqa: E402
from convkit.core.inputs import parse_input_spec, random_inputs  # noqa: E402
from convkit.core.sources import load_factory  # noqa: E402
from convkit.diagnose.localize import localize_against_framework, onnxruntime_evaluator  # noqa: E402
from convkit.frontends import ExportOptions, LoadOptions  # noqa: E402
from convkit.frontends.torch import TorchFrontend  # noqa: E402
from convkit.frontends.torch import layer_scopes as torch_layers  # noqa: E402
from convkit.graph.model import load_onnx  # noqa: E402

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[3]
MODELS = "fixtures/models/torch_models.py"
SPECS = {
    "reference_cnn": ["x:batch,1,28,28"],
    "conv_bn_net": ["x:batch,3,16,16"],
    "transformer_block": ["src:batch,seq,16"],
    "permute_mixer": ["x:batch,4,4"],
}
# the reference CNN as exported by torch.export: (label, ONNX value, activation shape without the batch)
REFERENCE_PAIRS = [
    ("conv1", "conv2d", (32, 26, 26)),
    ("relu", "relu", (32, 26, 26)),  # torch.relu: paired where the shared pool receives it
    ("pool (call 1)", "max_pool2d", (32, 13, 13)),
    ("conv2", "conv2d_1", (64, 11, 11)),
    ("relu_1", "relu_1", (64, 11, 11)),
    ("pool (call 2)", "max_pool2d_1", (64, 5, 5)),
    ("flatten", "view", (1600,)),
    ("fc1", "linear", (128,)),
    ("relu_2", "relu_2", (128,)),  # received by fc2 (the Dropout has no node at inference)
    ("fc2", "linear_1", (10,)),
    ("softmax", "output", (10,)),  # the model's output, computed by torch.softmax
]


@pytest.fixture(scope="module")
def frontend() -> TorchFrontend:
    return TorchFrontend()


def factory(name: str) -> torch.nn.Module:
    source = f"{ROOT / MODELS}:{name}"
    return TorchFrontend().load(source, LoadOptions(), load_factory(source))


def exported(name: str, folder: Path, exporter: str | None = None) -> tuple[torch.nn.Module, Path]:
    model = factory(name)
    specs = [parse_input_spec(text) for text in SPECS[name]]
    path = folder / f"{name}-{exporter or 'dynamo'}.onnx"
    TorchFrontend().export(model, specs, random_inputs(specs, 2), path, ExportOptions(exporter=exporter))
    return model, path


def feeds_for(name: str, batch: int = 3) -> dict[str, np.ndarray]:
    return random_inputs([parse_input_spec(text) for text in SPECS[name]], batch, seed=batch)


@pytest.fixture(scope="module")
def reference_export(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """The reference CNN exported once with the torch.export-based exporter; (model, path)."""
    return exported("reference_cnn", tmp_path_factory.mktemp("reference"))


def test_layer_outputs_pair_modules_and_functional_calls_in_execution_order(frontend, reference_export):
    model, path = reference_export
    proto = onnx.load(path)
    feeds = feeds_for("reference_cnn")
    pairs = frontend.layer_outputs(model, proto, feeds)
    assert [(p.layer, p.onnx_value, p.value.shape[1:]) for p in pairs] == REFERENCE_PAIRS
    values = onnxruntime_evaluator(proto)([p.onnx_value for p in pairs], feeds)
    for pair, value in zip(pairs, values, strict=True):
        assert pair.value.dtype == np.float32
        assert compare_arrays(pair.onnx_value, pair.value, value).passed, pair.layer


def test_torchscript_exports_are_paired_by_node_names(frontend, tmp_path):
    """No metadata there: ``/conv1/Conv`` is in ``conv1``, ``/pool_1/MaxPool`` in the second call of
    ``pool``; functional calls are named after their node (``Relu_2``)."""
    model, path = exported("reference_cnn", tmp_path, "torchscript")
    pairs = frontend.layer_outputs(model, onnx.load(path), feeds_for("reference_cnn"))
    assert [p.layer for p in pairs] == [
        "conv1", "Relu", "pool (call 1)", "conv2", "Relu_1", "pool (call 2)",
        "flatten", "fc1", "Relu_2", "fc2", "Softmax",
    ]  # fmt: skip
    assert pairs[5].onnx_value == "/pool_1/MaxPool_output_0"
    found = localize_against_framework(load_onnx(path), frontend, model, feeds_for("reference_cnn"))
    assert found.first is None and found.checked_values == 11, found.describe()


@pytest.mark.parametrize(
    ("name", "exporter", "absent"),
    [
        # torch.export's optimizer folds the BatchNorm into the Conv and keeps the BatchNorm's scope
        ("conv_bn_net", None, "conv"),
        # the TorchScript exporter folds it too, but names the fused node after the Conv: the Conv's value
        # holds the BatchNorm's result, so the Conv is left out
        ("conv_bn_net", "torchscript", "conv"),
        # nested modules, an attention block returning (tensor, None), residual additions
        ("transformer_block", None, None),
    ],
    ids=["conv-bn-dynamo", "conv-bn-torchscript", "transformer-dynamo"],
)
def test_faithful_exports_localize_to_nothing(frontend, tmp_path, name, exporter, absent):
    model, path = exported(name, tmp_path, exporter)
    feeds = feeds_for(name)
    layers = [p.layer for p in frontend.layer_outputs(model, onnx.load(path), feeds)]
    assert len(layers) >= 4, layers
    assert absent not in layers
    found = localize_against_framework(load_onnx(path), frontend, model, feeds)
    assert found.first is None, found.describe()
    assert found.checked_values == len(layers)


def test_a_node_without_metadata_makes_its_neighbours_unclear(frontend, reference_export):
    """The first Relu loses its scope: conv1 (read by it) and the Relu's own value are left out; the rest
    stay."""
    model, path = reference_export
    proto = onnx.load(path)
    relu = next(n for n in proto.graph.node if n.output[0] == "relu")
    del relu.metadata_props[:]
    pairs = frontend.layer_outputs(model, proto, feeds_for("reference_cnn"))
    kept = [layer for layer, _, _ in REFERENCE_PAIRS if layer not in ("conv1", "relu")]
    assert [p.layer for p in pairs] == kept


def test_models_without_scopes_or_hooks_give_nothing(frontend, reference_export):
    model, path = reference_export
    proto = onnx.load(path)
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.name = ""
    feeds = feeds_for("reference_cnn")
    assert frontend.layer_outputs(model, proto, feeds) == []
    program = torch.export.export(model, (torch.from_numpy(feeds["x"]),))
    assert frontend.layer_outputs(program, onnx.load(path), feeds) == []


def test_scope_records_are_read_as_module_paths():
    paths = {"", "blocks", "blocks.0", "blocks.0.seq", "blocks.0.seq.0", "pool", "pool_2x"}
    scope = torch_layers._torchscript_scope("/blocks.0/seq/seq.0/MatMul", paths)
    assert scope is not None and scope.modules == ("blocks.0", "blocks.0.seq", "blocks.0.seq.0")
    assert scope.op == "MatMul"
    second = torch_layers._torchscript_scope("/pool_1/MaxPool", paths)
    assert second is not None and second.modules == ("pool",) and second.calls == (1,)
    assert torch_layers._torchscript_scope("/Relu_2", paths) == torch_layers._NodeScope((), (), "Relu_2")
    assert torch_layers._torchscript_scope("/unknown/Relu", paths) is None
    assert torch_layers._torchscript_scope("Relu_2", paths) is None
    node = onnx.helper.make_node("Relu", ["a"], ["b"])
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", "['', 'blocks.0', 'blocks.0.lin', 'linear']"
    assert torch_layers._dynamo_scope(node) == torch_layers._NodeScope(
        ("blocks.0", "blocks.0.lin"), (None, None), "linear"
    )
    entry.value = "['_empty_nn_module_stack_from_metadata_hook', 'sym_size_int_2']"
    assert torch_layers._dynamo_scope(node) == torch_layers._NodeScope((), (), "sym_size_int_2")


# ----------------------------------------------------------------------------- planted faults, from the CLI
FAULTS = {
    # fault: (model, expected layer, node, op type)
    "conv2 bias": ("reference_cnn", "conv2", "node_conv2d_1", "Conv"),
    # torch.relu after fc1 has no module; its node (relu_2) is found at fc2's input
    "fc1 LeakyRelu": ("reference_cnn", "relu_2", "node_relu_2", "LeakyRelu"),
    # x.permute(0, 2, 1) between two Linear layers, found at the second one's input
    "Transpose perm": ("permute_mixer", "permute", "node_permute", "Transpose"),
}


def plant(proto: onnx.ModelProto, fault: str) -> None:
    """Change ``proto`` in place: conv2's bias, the Relu after fc1, or the permute's Transpose."""
    nodes = proto.graph.node
    if fault == "conv2 bias":
        conv = next(n for n in nodes if n.op_type == "Conv" and n.input[1] == "conv2.weight")
        bias = next(t for t in proto.graph.initializer if t.name == conv.input[2])
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, bias.name))
    elif fault == "fc1 LeakyRelu":
        fc1 = next(n for n in nodes if n.input[1:2] == ["fc1.weight"])
        relu = next(n for n in nodes if n.op_type == "Relu" and n.input[0] == fc1.output[0])
        relu.op_type = "LeakyRelu"
        relu.attribute.append(onnx.helper.make_attribute("alpha", 0.1))
    else:
        (transpose,) = [n for n in nodes if n.op_type == "Transpose"]
        (perm,) = transpose.attribute
        assert list(perm.ints) == [0, 2, 1]
        perm.ints[:] = [0, 1, 2]  # same shape (the mixer is square), other values


@pytest.fixture(scope="module")
def localized(reference_export, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    """`convkit verify FAULTY --source ... --framework torch --localize --report R` for every planted fault,
    run in this interpreter; fault -> (finished command, report path)."""
    folder = tmp_path_factory.mktemp("faults")
    finished = {}
    for k, (fault, (model, *_)) in enumerate(FAULTS.items()):
        path = reference_export[1] if model == "reference_cnn" else exported(model, folder)[1]
        proto = onnx.load(path)
        plant(proto, fault)
        faulty = folder / f"faulty{k}.onnx"
        onnx.save(proto, faulty)
        report = folder / f"report{k}.json"
        command = ["verify", str(faulty), "--source", f"{MODELS}:{model}"]
        command += ["--framework", "torch", "--localize", "--report", str(report)]
        finished[fault] = (run_convkit(*command, cwd=ROOT, timeout=300), report)
    return finished


@pytest.mark.parametrize("fault", list(FAULTS), ids=["conv2-bias", "fc1-leaky-relu", "transpose-perm"])
def test_cli_localize_names_the_faulty_module_or_call(localized, fault):
    """`convkit verify --localize` against torch's own modules names the node and the module (or functional
    call) in the text and in the JSON report."""
    _, layer, node, op_type = FAULTS[fault]
    done, report = localized[fault]
    assert done.returncode == 1, done.stdout + done.stderr
    found = json.loads(report.read_text())["localization"]
    assert found["oracle"] == "torch layers"
    first = found["first_divergence"]
    assert (first["source"], first["node"], first["op_type"]) == (layer, node, op_type), found
    assert f"layer '{layer}'" in done.stdout and f"node '{node}'" in done.stdout
    print(f"{fault}: {first['source']} / {first['node']} differs by {first['output_max_abs_diff']:.3g}")
