"""The PyTorch front end with real torch and onnxruntime: export, parity at two batch sizes, fallbacks,
file formats, safe loading, silence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TESTCASES
from onnx import numpy_helper

from convkit.frontends import frontend_info

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from torch import nn  # noqa: E402

from convkit.core.artifacts import read_test_data_set  # noqa: E402
from convkit.core.compare import compare_arrays  # noqa: E402
from convkit.core.inputs import InputSpec, parse_input_spec, random_inputs  # noqa: E402
from convkit.core.runtime import RuntimeSession, SessionOptions  # noqa: E402
from convkit.core.sources import load_factory  # noqa: E402
from convkit.errors import (  # noqa: E402
    DataError,
    ExportError,
    InputFileError,
    ModelLoadError,
    UnsafeModelError,
)
from convkit.frontends import ExportOptions, LoadOptions  # noqa: E402
from convkit.frontends.torch import TorchFrontend  # noqa: E402
from convkit.graph.model import load_onnx  # noqa: E402

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "fixtures" / "models" / "torch_models.py"
INPUT_SPECS = {
    "reference_cnn": ["x:batch,1,28,28"],
    "conv_bn_net": ["x:batch,3,16,16"],
    "transformer_block": ["src:batch,seq,16"],
    "token_lstm": ["tokens:batch,seq:int64:0..50"],
    "two_in_two_out": ["image:batch,3,8,8", "meta:batch,4"],
}
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def frontend() -> TorchFrontend:
    return TorchFrontend()


def factory(name: str) -> nn.Module:
    return TorchFrontend().load(f"{MODELS}:{name}", LoadOptions(), load_factory(f"{MODELS}:{name}"))


def specs_of(name: str) -> list[InputSpec]:
    return [parse_input_spec(text) for text in INPUT_SPECS[name]]


def export(model, specs, path: Path, **options) -> object:
    example = random_inputs(specs, 2, seed=0)
    return TorchFrontend().export(model, specs, example, path, ExportOptions(**options))


def parity(model, specs, path: Path, sizes=(1, 3)) -> float:
    """Run onnxruntime and eager torch at each size of the symbolic dims; assert parity, return max diff."""
    session = RuntimeSession(load_onnx(path), SessionOptions(provider="cpu"))
    worst = 0.0
    for size in sizes:
        feeds = random_inputs(specs, size, seed=size)
        expected = TorchFrontend().run(model, feeds)
        actual = list(session.run(feeds).values())
        assert len(actual) == len(expected)
        for k, (exp, act) in enumerate(zip(expected, actual, strict=True)):
            result = compare_arrays(f"output {k}", exp, act)
            assert result.passed, (size, result)
            # held to the defaults: atol 1e-5, or 1e-5 x max|expected| where that is larger (never loosened)
            assert exp.dtype.kind != "f" or (result.atol_rule in ("default", "scale") and result.rtol == RTOL)
            assert result.atol == max(ATOL, 1e-5 * (result.expected_scale or 0.0)) or exp.dtype.kind != "f"
            worst = max(worst, result.max_abs_diff or 0.0)
    return worst


def input_dims(path: Path) -> dict[str, list[int | str]]:
    graph = onnx.load(str(path)).graph
    return {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in graph.input
    }


# ------------------------------------------------------------------------------------- the fixture models
@pytest.mark.parametrize("name", list(INPUT_SPECS))
def test_fixture_model_exports_with_torch_export_and_matches_at_batch_1_and_3(name, tmp_path):
    model = factory(name)
    specs = specs_of(name)
    path = tmp_path / "model.onnx"
    result = export(model, specs, path)
    assert result.exporter == "dynamo"
    assert result.notes == []
    assert result.opset == load_onnx(path).opset
    assert input_dims(path) == {spec.name: spec.dims for spec in specs}
    assert not list(tmp_path.glob("*.data")), "a small model is one self-contained file"
    worst = parity(model, specs, path)
    print(f"{name}: max abs diff {worst:.3g}")


def test_fixture_specs_match_the_fixture_module():
    assert load_factory(f"{MODELS}:INPUT_SPECS") == INPUT_SPECS


def test_reference_cnn_computes_the_bundled_framework_free_test_case(frontend):
    case = TESTCASES / "reference_cnn"
    model = factory("reference_cnn")
    for data_set in sorted(case.glob("test_data_set_*")):
        inputs, outputs = read_test_data_set(data_set, ["x"], ["probs"])
        (actual,) = frontend.run(model, inputs)
        assert compare_arrays("probs", outputs["probs"], actual).passed


def test_input_names_are_the_forward_parameters(frontend):
    assert frontend.input_names(factory("two_in_two_out")) == ["image", "meta"]
    # optional parameters (masks, flags) stay at their defaults
    assert frontend.input_names(factory("transformer_block")) == ["src"]
    assert frontend.input_specs(factory("reference_cnn")) is None


def test_a_forward_whose_inputs_are_all_optional_takes_any_subset_by_name(frontend, tmp_path):
    class AllOptional(nn.Module):
        def forward(self, input_ids=None, scale=None, **kwargs):
            return input_ids.float() * (1.0 if scale is None else scale)

    model = AllOptional().eval()
    assert frontend.input_names(model) is None  # the core then takes the user's names as given
    specs = [InputSpec("scale", ["batch", 1]), InputSpec("input_ids", ["batch", 5], "int64")]
    path = tmp_path / "m.onnx"
    export(model, specs, path)
    assert load_onnx(path).input_names == ["input_ids", "scale"]  # forward's order
    parity(model, specs, path)


def test_a_forward_taking_star_args_exports_in_the_given_order(frontend, tmp_path):
    class StarArgs(nn.Module):
        def forward(self, *args):
            return args[0] * 2 - args[1]

    model = StarArgs().eval()
    assert frontend.input_names(model) is None
    specs = [InputSpec("a", ["batch", 3]), InputSpec("b", ["batch", 3])]
    path = tmp_path / "m.onnx"
    assert export(model, specs, path).exporter == "dynamo"
    assert input_dims(path) == {"a": ["batch", 3], "b": ["batch", 3]}
    parity(model, specs, path)


def test_output_names_follow_the_structure_of_the_outputs(frontend, tmp_path):
    class Nested(nn.Module):
        def forward(self, x):
            return x + 1, {"b": x * 2, "c": [x - 1, x.sum(dim=1)]}

    class Named(nn.Module):
        def forward(self, x):
            return {"logits": x * 3, "probs": torch.softmax(x, dim=-1)}

    specs = [InputSpec("x", ["batch", 4])]
    nested = tmp_path / "nested.onnx"
    export(Nested().eval(), specs, nested)
    assert load_onnx(nested).output_names == ["output_0", "output_1_b", "output_1_c_0", "output_1_c_1"]
    parity(Nested().eval(), specs, nested)
    named = tmp_path / "named.onnx"
    export(Named().eval(), specs, named)
    assert load_onnx(named).output_names == ["logits", "probs"]
    parity(Named().eval(), specs, named)


# ---------------------------------------------------------------------------------------- exporters
def test_data_dependent_branch_falls_back_to_torchscript_with_a_note(tmp_path):
    model = factory("data_dependent_branch")
    specs = [InputSpec("x", ["batch", 4])]
    path = tmp_path / "model.onnx"
    result = export(model, specs, path)
    assert result.exporter == "torchscript"
    fallback = result.notes[0]
    assert "torch.export could not capture the model" in fallback
    assert "GuardOnDataDependentSymNode" in fallback
    assert "torch_models.py" in fallback and "if x.abs().sum() >= 0:" in fallback
    assert "TorchScript exporter" in fallback
    assert any("TorchScript tracer warned" in note for note in result.notes[1:])
    assert input_dims(path) == {"x": ["batch", 4]}
    parity(model, specs, path)


def test_forcing_torch_export_on_an_uncapturable_model_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="GuardOnDataDependentSymNode") as info:
        export(
            factory("data_dependent_branch"),
            [InputSpec("x", ["batch", 4])],
            tmp_path / "m.onnx",
            exporter="dynamo",
        )
    assert "--exporter torchscript" in info.value.hint


def test_forcing_the_torchscript_exporter(tmp_path):
    model = factory("reference_cnn")
    specs = specs_of("reference_cnn")
    path = tmp_path / "model.onnx"
    result = export(model, specs, path, exporter="torchscript", opset=17)
    assert result.exporter == "torchscript"
    assert result.opset == 17
    assert input_dims(path) == {"x": ["batch", 1, 28, 28]}
    parity(model, specs, path)


def test_unknown_exporter_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="unknown exporter 'onnxscript'") as info:
        export(factory("conv_bn_net"), specs_of("conv_bn_net"), tmp_path / "m.onnx", exporter="onnxscript")
    assert "dynamo" in info.value.hint and "torchscript" in info.value.hint


def test_a_dimension_the_model_fixes_is_an_error_not_a_silent_static_export(tmp_path):
    class FixedBatch(nn.Module):
        def forward(self, x):
            return x.view(2, 4) * 2

    with pytest.raises(ExportError, match=r"fixed dimension 0 \(batch\) of input 'x' to 2") as info:
        export(FixedBatch().eval(), [InputSpec("x", ["batch", 4])], tmp_path / "m.onnx")
    assert "x:2,4" in info.value.hint


def test_export_prints_nothing_by_default(tmp_path, capfd):
    export(factory("reference_cnn"), specs_of("reference_cnn"), tmp_path / "a.onnx")
    export(factory("data_dependent_branch"), [InputSpec("x", ["batch", 4])], tmp_path / "b.onnx")
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err == ""


# ------------------------------------------------------------------------------------- model files
def test_exported_program_source_loads_declares_its_inputs_and_exports(frontend, tmp_path):
    model = factory("reference_cnn")
    program = torch.export.export(
        model, (torch.randn(2, 1, 28, 28),), dynamic_shapes={"x": {0: torch.export.Dim("n")}}
    )
    pt2 = tmp_path / "cnn.pt2"
    torch.export.save(program, str(pt2))
    assert frontend.claims_path(pt2)
    loaded = frontend.load(str(pt2), LoadOptions())
    assert isinstance(loaded, torch.export.ExportedProgram)
    assert frontend.input_names(loaded) == ["x"]
    specs = frontend.input_specs(loaded)
    assert specs == [InputSpec("x", ["batch", 1, 28, 28], "float32")]
    path = tmp_path / "model.onnx"
    result = export(loaded, specs, path)
    assert result.exporter == "dynamo"
    assert input_dims(path) == {"x": ["batch", 1, 28, 28]}
    parity(loaded, specs, path)


def test_torchscript_source_loads_and_exports(frontend, tmp_path):
    model = factory("two_in_two_out")
    traced = torch.jit.trace(model, (torch.randn(2, 3, 8, 8), torch.randn(2, 4)))
    ts = tmp_path / "model.pt"
    traced.save(str(ts))
    loaded = frontend.load(str(ts), LoadOptions())
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert frontend.input_names(loaded) == ["image", "meta"]
    specs = specs_of("two_in_two_out")
    path = tmp_path / "model.onnx"
    result = export(loaded, specs, path)
    assert result.exporter == "torchscript"
    assert input_dims(path) == {"image": ["batch", 3, 8, 8], "meta": ["batch", 4]}
    parity(loaded, specs, path)
    with pytest.raises(ExportError, match="TorchScript model cannot go through torch.export"):
        export(loaded, specs, tmp_path / "other.onnx", exporter="dynamo")


def test_claims_pytorch_files_only(frontend, tmp_path):
    for suffix in (".pt2", ".pt", ".pth", ".ts"):
        assert frontend.claims_path(tmp_path / f"model{suffix}")
    for suffix in (".onnx", ".keras", ".h5", ".py"):
        assert not frontend.claims_path(tmp_path / f"model{suffix}")


def test_weights_load_safely_plain_or_wrapped(frontend, tmp_path):
    trained = factory("conv_bn_net")
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.25)
    plain = tmp_path / "plain.pt"
    torch.save(trained.state_dict(), plain)
    wrapped = tmp_path / "wrapped.ckpt"
    torch.save({"epoch": 3, "state_dict": trained.state_dict(), "lr": 0.1}, wrapped)
    data = random_inputs(specs_of("conv_bn_net"), 2)
    (want,) = frontend.run(trained, data)
    for checkpoint in (plain, wrapped):
        model = frontend.load(
            f"{MODELS}:conv_bn_net", LoadOptions(weights=str(checkpoint)), factory("conv_bn_net")
        )
        assert not model.training
        np.testing.assert_array_equal(frontend.run(model, data)[0], want)


def test_weights_that_do_not_fit_name_the_keys(frontend, tmp_path):
    checkpoint = tmp_path / "other.pt"
    torch.save(factory("conv_bn_net").state_dict(), checkpoint)
    with pytest.raises(ModelLoadError) as info:
        frontend.load("cnn", LoadOptions(weights=str(checkpoint)), factory("reference_cnn"))
    message = str(info.value)
    assert "missing key(s): conv1.weight" in message
    assert "unexpected key(s): conv.weight" in message
    assert str(checkpoint) in message
    resized = {k: v[:1] if k == "fc.bias" else v for k, v in factory("conv_bn_net").state_dict().items()}
    torch.save(resized, checkpoint)
    with pytest.raises(ModelLoadError, match=r"shape mismatch.*fc.bias \(1,\) vs \(4,\)"):
        frontend.load("net", LoadOptions(weights=str(checkpoint)), factory("conv_bn_net"))


def test_a_state_dict_given_as_the_source_says_to_use_weights(frontend, tmp_path):
    checkpoint = tmp_path / "weights.pth"
    torch.save(factory("conv_bn_net").state_dict(), checkpoint)
    with pytest.raises(ModelLoadError, match="holds only weights") as info:
        frontend.load(str(checkpoint), LoadOptions())
    assert "--weights" in info.value.hint and "factory" in info.value.hint


class _Payload:
    """Unpickling this touches a marker file: stands in for code hidden in a model file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_module_is_refused_without_the_flag_and_loads_with_it(frontend, tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)), whole)
    with pytest.raises(UnsafeModelError) as info:
        frontend.load(str(whole), LoadOptions())
    assert "--unsafe-allow-pickle" in info.value.hint and "runs" in info.value.message
    model = frontend.load(str(whole), LoadOptions(unsafe_pickle=True))
    assert isinstance(model, nn.Sequential) and not model.training
    data = {"input": np.ones((2, 4), np.float32)}
    np.testing.assert_array_equal(frontend.run(model, data)[0], frontend.run(model, data)[0])


def test_refusing_a_pickle_runs_none_of_its_code(frontend, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, evil)
    for options in (LoadOptions(), LoadOptions(weights=str(evil))):
        with pytest.raises(UnsafeModelError):
            if options.weights:
                frontend.load("m", options, factory("conv_bn_net"))
            else:
                frontend.load(str(evil), options)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_corrupt_or_truncated_files_name_the_file(frontend, tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    if suffix == ".pt2":
        torch.export.save(
            torch.export.export(factory("conv_bn_net"), (torch.randn(2, 3, 16, 16),)), str(good)
        )
    else:
        torch.jit.trace(factory("conv_bn_net"), torch.randn(2, 3, 16, 16)).save(str(good))
    blob = good.read_bytes()
    for label, content in (("truncated", blob[: len(blob) // 2]), ("garbage", b"\x00not a model" * 10)):
        bad = tmp_path / f"{label}{suffix}"
        bad.write_bytes(content)
        with pytest.raises(ModelLoadError, match=str(bad).replace(".", r"\.")):
            frontend.load(str(bad), LoadOptions())
    with pytest.raises(InputFileError):
        frontend.load(str(tmp_path / f"missing{suffix}"), LoadOptions())


def test_unknown_input_name_is_a_data_error(frontend):
    with pytest.raises(DataError, match="no input named y"):
        frontend.run(factory("reference_cnn"), {"y": np.zeros((1, 1, 28, 28), np.float32)})


# -------------------------------------------------------------------------------------- evidence
def test_a_tampered_onnx_file_no_longer_matches(tmp_path):
    model = factory("reference_cnn")
    specs = specs_of("reference_cnn")
    path = tmp_path / "model.onnx"
    export(model, specs, path)
    proto = onnx.load(str(path))
    biggest = max(proto.graph.initializer, key=lambda t: np.prod(t.dims) if len(t.dims) == 1 else 0)
    value = numpy_helper.to_array(biggest).copy()
    value.flat[int(np.argmax(value))] += 1.0
    biggest.CopyFrom(numpy_helper.from_array(value, biggest.name))
    onnx.save(proto, str(path))
    session = RuntimeSession(load_onnx(path), SessionOptions(provider="cpu"))
    feeds = random_inputs(specs, 3, seed=3)
    (expected,) = TorchFrontend().run(model, feeds)
    (actual,) = session.run(feeds).values()
    assert not compare_arrays("output", expected, actual).passed


def test_versions_and_availability(frontend):
    assert frontend.is_available() is None
    versions = frontend.versions()
    assert versions["torch"] == torch.__version__
    assert "onnxscript" in versions
    info = frontend_info(frontend.name)  # the registry holds the framework's identity
    assert (frontend.name, info.aliases, info.extra) == ("torch", ("pytorch",), "torch")


def test_run_puts_the_model_in_eval_mode_and_needs_no_gradients(frontend):
    model = factory("reference_cnn").train()
    data = random_inputs(specs_of("reference_cnn"), 2)
    first, second = frontend.run(model, data)[0], frontend.run(model, data)[0]
    np.testing.assert_array_equal(first, second)  # dropout off
    assert not model.training


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_verbose_shows_the_exporters_own_output(tmp_path, capfd):
    export(factory("conv_bn_net"), specs_of("conv_bn_net"), tmp_path / "m.onnx", verbose=True)
    assert "[torch.onnx]" in capfd.readouterr().out


def test_a_model_that_raises_on_the_inputs_is_a_data_error(frontend):
    with pytest.raises(DataError, match=r"the model raised RuntimeError on inputs x \(2, 1, 20, 20\)"):
        frontend.run(factory("reference_cnn"), {"x": np.zeros((2, 1, 20, 20), np.float32)})


def test_a_pt2_with_a_fixed_batch_cannot_become_dynamic(frontend, tmp_path):
    pt2 = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(factory("conv_bn_net"), (torch.randn(2, 3, 16, 16),)), str(pt2))
    loaded = frontend.load(str(pt2), LoadOptions())
    assert frontend.input_specs(loaded) == [InputSpec("x", [2, 3, 16, 16], "float32")]
    with pytest.raises(ExportError, match="the .pt2 was exported with that size fixed") as info:
        export(loaded, specs_of("conv_bn_net"), tmp_path / "m.onnx")
    assert "dynamic_shapes" in info.value.hint


def test_a_submodule_named_meta_still_exports(tmp_path):
    """torch 2.13's ONNX translation confuses a submodule ``meta`` with ``GraphModule.meta``; whichever
    exporter ends up writing the file, it must be right (and say why when it is the fallback)."""

    class Meta(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.meta = nn.Linear(4, 3)

        def forward(self, x):
            return self.meta(x)

    model = Meta().eval()
    specs = [InputSpec("x", ["batch", 4])]
    result = export(model, specs, tmp_path / "m.onnx")
    if result.exporter == "torchscript":
        assert "failed at translation to ONNX" in result.notes[0]
    parity(model, specs, tmp_path / "m.onnx")


def test_importing_the_front_end_does_not_import_torch():
    code = "import sys, convkit.frontends.torch; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0
