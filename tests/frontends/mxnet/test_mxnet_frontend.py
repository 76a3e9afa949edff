"""The MXNet front end through its API: the reference CNN against the framework-free test case, saved symbol
models (good and broken), factories, weights and opsets at the worker's edges. Real MXNet, no mocks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, TESTCASES

from convkit import api
from convkit.core.artifacts import list_test_data_sets, read_test_data_set
from convkit.core.inputs import parse_input_spec
from convkit.errors import DataError, InputFileError, ModelLoadError
from convkit.frontends import LoadOptions, resolve_source
from convkit.frontends._worker import WorkerSourceError
from convkit.frontends._worker.envs import env_python, unavailable_reason
from convkit.frontends.base import ExportOptions
from convkit.frontends.mxnet import MXNetFrontend, symbol_files
from convkit.graph.model import load_onnx
from convkit.reference.cnn import load_weights

_REASON = unavailable_reason("mxnet")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.mxnet

MODELS = FIXTURES / "models" / "mxnet_models.py"
BROKEN = ROOT / "tests" / "frontends" / "mxnet" / "broken_models.py"
CNN_INPUT = [parse_input_spec("x:batch,1,28,28")]


@pytest.fixture(scope="module")
def frontend():
    return MXNetFrontend()


@pytest.fixture(scope="module")
def reference(frontend):
    """The reference CNN with the canonical weights, saved by the worker as a symbol and its parameters."""
    return frontend.reference_cnn(load_weights())


@pytest.fixture
def saved(reference, tmp_path):
    """A copy of the saved reference CNN (``model-symbol.json``, ``model-0000.params``) to spoil."""
    folder = tmp_path / "saved"
    folder.mkdir()
    for key in ("symbol_file", "params_file"):
        shutil.copy(reference.spec[key], folder)
    return folder


def test_reference_cnn_matches_the_stored_test_case(frontend, reference):
    case = TESTCASES / "reference_cnn"
    model = load_onnx(case / "model.onnx")
    for folder in list_test_data_sets(case):
        inputs, expected = read_test_data_set(folder, model.input_names, model.output_names)
        (probs,) = frontend.run(reference, inputs)
        np.testing.assert_allclose(probs, next(iter(expected.values())), atol=1e-5, rtol=0)


def test_a_saved_symbol_model_is_recognized_and_names_its_input(saved, tmp_path):
    assert symbol_files(saved) == (saved / "model-symbol.json", [saved / "model-0000.params"])
    for path in (saved, saved / "model-symbol.json", saved / "model-0000.params"):
        chosen, preloaded = resolve_source(str(path), None)  # no --framework: the files say MXNet
        assert chosen.name == "mxnet" and preloaded is None
    handle = chosen.load(str(saved), LoadOptions())
    assert chosen.input_names(handle) == ["x"] and chosen.input_specs(handle) is None
    with pytest.raises(DataError, match=r"does not declare its input shapes \(x\)"):
        api.export_model(str(saved), tmp_path / "model.onnx")


def test_a_symbol_without_its_parameters_is_refused_before_mxnet_starts(frontend, saved):
    (saved / "model-0000.params").unlink()
    with pytest.raises(InputFileError, match=r"model-symbol.json has no parameters beside it") as caught:
        frontend.load(str(saved / "model-symbol.json"), LoadOptions())
    assert "HybridBlock.export" in caught.value.hint


def test_several_epochs_need_the_params_file_named(frontend, saved):
    shutil.copy(saved / "model-0000.params", saved / "model-0007.params")
    with pytest.raises(
        InputFileError, match=r"parameters for several epochs \(model-0000.params, model-0007"
    ):
        frontend.load(str(saved), LoadOptions())
    handle = frontend.load(str(saved / "model-0007.params"), LoadOptions())
    assert handle.spec["params_file"].endswith("model-0007.params")


def test_parameters_that_do_not_fit_the_symbol_are_named(frontend, saved):
    script = (
        "import mxnet as mx, sys\n"
        "params = mx.nd.load(sys.argv[1])\n"
        "del params['arg:fc1.weight']\n"
        "mx.nd.save(sys.argv[1], params)\n"
    )
    subprocess.run([str(env_python("mxnet")), "-c", script, str(saved / "model-0000.params")], check=True)
    handle = frontend.load(str(saved), LoadOptions())
    with pytest.raises(
        ModelLoadError, match="model-0000.params does not match model-symbol.json: it lacks fc1.weight"
    ):
        frontend.input_names(handle)


def test_a_corrupt_symbol_file_is_one_clear_error(frontend, saved):
    (saved / "model-symbol.json").write_text('{"nodes": [garbage')
    handle = frontend.load(str(saved), LoadOptions())
    with pytest.raises(
        ModelLoadError, match="cannot read the MXNet symbol file .*model-symbol.json: Error at"
    ):
        frontend.input_names(handle)


def test_factories_are_not_imported_in_this_process():
    code = (
        "import sys\n"
        "from convkit.frontends import resolve_source\n"
        f"frontend, obj = resolve_source({str(BROKEN) + ':raises'!r}, 'mxnet')\n"
        "print(frontend.name, obj, 'mxnet' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["mxnet", "None", "False"]


def test_worker_errors_map_to_convkit_errors(frontend):
    x = {"x": np.zeros((1, 4), np.float32)}
    with pytest.raises(WorkerSourceError, match="the factory broke on purpose"):
        frontend.run(frontend.load(f"{BROKEN}:raises", LoadOptions()), x)
    with pytest.raises(ModelLoadError, match="parameters are not initialized") as caught:
        frontend.run(frontend.load(f"{BROKEN}:not_initialized", LoadOptions()), x)
    assert "block.initialize()" in caught.value.hint


def test_two_inputs_two_outputs_in_forward_order(tmp_path):
    source = f"{MODELS}:two_inputs"
    target = tmp_path / "model.onnx"
    specs = [parse_input_spec("b:batch,8"), parse_input_spec("a:batch,8")]
    summary = api.export_model(source, target, framework="mxnet", input_specs=specs)
    assert summary.report.passed
    model = load_onnx(target)
    assert model.input_names == ["a", "b"] and model.output_names == ["output_0", "output_1"]
    assert {"proj.weight", "proj.bias"} <= {t.name for t in model.proto.graph.initializer}


def test_one_handle_is_one_model_even_when_the_factory_is_unseeded(frontend):
    """Each request runs in a worker process of its own (the reference run, the export); all must see the
    same weights."""
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    for factory in ("unseeded", "deferred"):  # a deferred block gets its weights only at its first call
        handle = frontend.load(f"{BROKEN}:{factory}", LoadOptions())
        first = frontend.run(handle, {"x": x})[0]
        again = frontend.run(handle, {"x": x[:2]})[0]
        # NOTE: why not bit for bit: batch 3 and batch 2 may take other kernels (1.9e-9 seen under load);
        # another seed would differ by far more
        np.testing.assert_allclose(first[:2], again, rtol=1e-5, atol=1e-6)


def test_weights_npz_keyed_by_parameter_path(frontend, tmp_path):
    rng = np.random.default_rng(1)
    weight, bias = rng.random((3, 4), dtype=np.float32), rng.random(3, dtype=np.float32)
    np.savez(tmp_path / "w.npz", weight=weight, bias=bias)
    handle = frontend.load(f"{BROKEN}:unseeded", LoadOptions(weights=str(tmp_path / "w.npz")))
    x = rng.random((2, 4), dtype=np.float32)
    np.testing.assert_allclose(frontend.run(handle, {"x": x})[0], x @ weight.T + bias, rtol=1e-6)
    np.savez(tmp_path / "bad.npz", weight=weight[:, :3], bias=bias, extra=bias)
    bad = frontend.load(f"{BROKEN}:unseeded", LoadOptions(weights=str(tmp_path / "bad.npz")))
    with pytest.raises(
        ModelLoadError, match=r"unexpected extra; wrong shape weight \[3, 3\] \(want \[3, 4\]\)"
    ):
        frontend.run(bad, {"x": x})


def test_weights_saved_by_gluon_save_parameters(frontend, tmp_path):
    """Gluon's own checkpoint (MXNet's array format, no pickle): the block's ``save_parameters`` file."""
    script = (
        "import sys, numpy as np, mxnet as mx\n"
        "from mxnet.gluon import nn\n"
        "block = nn.Dense(3, in_units=4)\n"
        "block.initialize(mx.init.Uniform(1.0))\n"
        "block.save_parameters(sys.argv[1])\n"
        "np.savez(sys.argv[2], weight=block.weight.data().asnumpy(), bias=block.bias.data().asnumpy())\n"
    )
    params, expected = tmp_path / "dense.params", tmp_path / "expected.npz"
    subprocess.run([str(env_python("mxnet")), "-c", script, str(params), str(expected)], check=True)
    handle = frontend.load(f"{BROKEN}:unseeded", LoadOptions(weights=str(params)))
    x = np.random.default_rng(2).random((2, 4), dtype=np.float32)
    with np.load(expected) as saved:
        np.testing.assert_allclose(
            frontend.run(handle, {"x": x})[0], x @ saved["weight"].T + saved["bias"], rtol=1e-6
        )


def test_opset_12_exports_too(tmp_path):
    source, spec = f"{MODELS}:residual_bn", [parse_input_spec("x:batch,3,16,16")]
    summary = api.export_model(
        source,
        tmp_path / "m12.onnx",
        framework="mxnet",
        input_specs=spec,
        export_options=ExportOptions(opset=12),
    )
    assert summary.report.passed and summary.export.opset == 12
    assert load_onnx(tmp_path / "m12.onnx").proto.opset_import[0].version == 12


def test_a_missing_model_is_an_input_error(frontend, tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        frontend.load(str(tmp_path / "nothing-symbol.json"), LoadOptions())
    with pytest.raises(InputFileError, match="is not a saved MXNet model"):
        frontend.load(str(tmp_path), LoadOptions())
    assert not frontend.claims_path(Path(tmp_path))
