"""The JAX front end in-process with real JAX, Flax, jax2onnx and onnxruntime: what the export makes of
input types, names and outputs, options and errors, ``--weights``, benchmark runners and the reference CNN."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import TESTCASES

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("jax2onnx")

import jax.numpy as jnp  # noqa: E402
from flax import linen, nnx  # noqa: E402

from convkit.core.artifacts import list_test_data_sets, read_test_data_set  # noqa: E402
from convkit.core.inputs import InputSpec, random_inputs  # noqa: E402
from convkit.core.runtime import RuntimeSession, SessionOptions  # noqa: E402
from convkit.core.sources import load_factory  # noqa: E402
from convkit.errors import (  # noqa: E402
    DataError,
    ExportError,
    InputFileError,
    ModelLoadError,
    UnsupportedModelError,
)
from convkit.frontends import (  # noqa: E402
    ExportOptions,
    LoadOptions,
    canonical_name,
    framework_of,
)
from convkit.frontends.jax import DEFAULT_OPSET, JaxFrontend  # noqa: E402
from convkit.graph.model import load_onnx  # noqa: E402
from convkit.reference.cnn import SHAPES, load_digits, load_weights  # noqa: E402

pytestmark = pytest.mark.jax

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "fixtures" / "models" / "jax_models.py"
CASE = TESTCASES / "reference_cnn"


@pytest.fixture(scope="module")
def frontend() -> JaxFrontend:
    frontend = JaxFrontend()
    reason = frontend.is_available()
    if reason is not None:
        pytest.skip(f"the jax front end is unavailable: {reason}")
    return frontend


def export_and_compare(
    frontend: JaxFrontend,
    model: Any,
    specs: list[InputSpec],
    path: Path,
    options: ExportOptions | None = None,
) -> tuple[onnx.ModelProto, float]:
    """Export at batch 2, run onnxruntime and JAX at batch 1 and 3; the model and the largest difference."""
    result = frontend.export(model, specs, random_inputs(specs, 2, 0), path, options or ExportOptions())
    session = RuntimeSession(load_onnx(path), SessionOptions(provider="cpu"))
    worst = 0.0
    for size in (1, 3):
        feeds = random_inputs(specs, size, size)
        expected = frontend.run(model, feeds)
        actual = list(session.run(feeds).values())
        assert [a.shape for a in actual] == [e.shape for e in expected]
        assert [a.dtype for a in actual] == [e.dtype for e in expected]
        for a, e in zip(actual, expected, strict=True):
            worst = max(worst, float(np.abs(a.astype(np.float64) - e.astype(np.float64)).max(initial=0.0)))
    proto = onnx.load(str(path))
    assert result.exporter.startswith("jax2onnx ")
    return proto, worst


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_registry_and_framework_inference(frontend):
    assert canonical_name("flax") == "jax"
    assert framework_of(nnx.Linear(2, 3, rngs=nnx.Rngs(0))) == "jax"
    assert framework_of(jax.jit(jnp.tanh)) == "jax"
    assert framework_of(functools.partial(jnp.dot, jnp.ones(2))) is None  # needs --framework jax
    assert not frontend.claims_path(Path("model.onnx")) and not frontend.claims_path(Path("ckpt.npz"))
    assert set(frontend.versions()) == {"jax", "jaxlib", "flax", "jax2onnx"}


def test_inputs_by_name_64_bit_types_cast_and_outputs_named_like_the_other_front_ends(frontend, tmp_path):
    """Several inputs (one unused) in the function's parameter order, int64 and float64 inputs kept as such
    and cast to JAX's 32 bits, a symbolic dimension JAX cannot parse (``max``), dict outputs by sorted key,
    an output that is an input, and one returned twice."""

    def model(ids, scale, unused):
        table = jnp.arange(20.0, dtype=jnp.float32).reshape(10, 2)
        picked = jnp.take(table, ids, axis=0).sum(axis=-1) * scale.astype(jnp.float32)
        return {"picked": picked, "echo": scale, "again": picked}

    specs = [
        InputSpec("ids", ["batch", "max"], "int64", 0, 10),
        InputSpec("scale", ["batch", "max"], "float64"),
        InputSpec("unused", ["batch", 3], "float32"),
    ]
    assert frontend.input_names(model) == ["ids", "scale", "unused"]
    path = tmp_path / "model.onnx"
    proto, worst = export_and_compare(frontend, model, specs, path)
    assert worst <= 1e-6
    graph = proto.graph
    assert [(i.name, dims(i)) for i in graph.input] == [(s.name, s.dims) for s in specs]
    types = [i.type.tensor_type.elem_type for i in graph.input]
    assert types == [onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT]
    assert [o.name for o in graph.output] == ["again", "echo", "picked"]  # jax.tree_util order
    assert all(dims(o) == ["batch", "max"] for o in graph.output)
    assert not graph.value_info
    onnx.checker.check_model(proto, full_check=True)


def test_plain_functions_jitted_functions_and_sequences(frontend, tmp_path):
    def pair(x):
        return (jnp.tanh(x), [x.sum(axis=-1), None])

    spec = [InputSpec("x", ["n", 4])]
    proto, worst = export_and_compare(frontend, jax.jit(pair), spec, tmp_path / "pair.onnx")
    assert worst <= 1e-6
    assert [o.name for o in proto.graph.output] == ["output_0", "output_1_0"]
    assert frontend.input_names(jax.jit(pair)) == ["x"]
    single = load_factory(f"{MODELS}:plain_function")
    proto, worst = export_and_compare(frontend, single, [InputSpec("x", ["batch", 6])], tmp_path / "fn.onnx")
    assert worst <= 1e-5 and [o.name for o in proto.graph.output] == ["output"]


def test_opset_option_and_exporter_choice(frontend, tmp_path):
    model = frontend.load("mlp", LoadOptions(), load_factory(f"{MODELS}:mlp_layernorm"))
    spec = [InputSpec("x", ["batch", 16])]
    for opset in (13, 21):
        proto, worst = export_and_compare(
            frontend, model, spec, tmp_path / f"{opset}.onnx", ExportOptions(opset)
        )
        assert worst <= 1e-5
        assert {o.domain: o.version for o in proto.opset_import}[""] == opset
    default, _ = export_and_compare(frontend, model, spec, tmp_path / "default.onnx")
    assert {o.domain: o.version for o in default.opset_import}[""] == DEFAULT_OPSET == 17
    example = random_inputs(spec, 2, 0)
    with pytest.raises(UnsupportedModelError, match="opset 11"):
        frontend.export(model, spec, example, tmp_path / "old.onnx", ExportOptions(opset=11))
    with pytest.raises(ExportError, match="dynamo"):
        frontend.export(model, spec, example, tmp_path / "x.onnx", ExportOptions(exporter="dynamo"))


def test_export_errors_name_the_cause(frontend, tmp_path):
    def callback(x):
        return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    def fixed(x):
        return x.reshape(2, -1)

    spec = [InputSpec("x", ["batch", 3])]
    example = random_inputs(spec, 2, 0)
    with pytest.raises(UnsupportedModelError, match="'pure_callback'"):
        frontend.export(callback, spec, example, tmp_path / "a.onnx", ExportOptions())
    with pytest.raises(ExportError, match="fixes a dimension given as symbolic") as caught:
        frontend.export(fixed, spec, example, tmp_path / "b.onnx", ExportOptions())
    assert "--static" in (caught.value.hint or "")
    with pytest.raises(DataError, match="rejected the inputs"):
        frontend.run(fixed, {"x": np.zeros((3, 3), np.float32)})
    assert not list(tmp_path.iterdir())


def test_load_accepts_jax_models_only(frontend, tmp_path):
    model = frontend.load("m", LoadOptions(), load_factory(f"{MODELS}:conv_batchnorm"))
    assert model.norm.use_running_average and model.dropout.deterministic  # eval mode
    with pytest.raises(UnsupportedModelError, match="Linen") as caught:
        frontend.load("linen", LoadOptions(), linen.Dense(3))
    assert "functools.partial(module.apply, variables)" in (caught.value.hint or "")
    with pytest.raises(UnsupportedModelError, match="not a JAX model"):
        frontend.load("dict", LoadOptions(), {"w": np.zeros(2)})
    with pytest.raises(InputFileError, match="factories"):
        frontend.load(str(tmp_path / "model.msgpack"), LoadOptions())


def test_weights_npz_loads_into_an_nnx_module(frontend, tmp_path):
    model = load_factory(f"{MODELS}:mlp_layernorm")
    flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    arrays = {".".join(map(str, key)): np.asarray(v.get_value()) + 1.0 for key, v in flat}
    assert "norm.scale" in arrays and "fc1.kernel" in arrays
    np.savez(tmp_path / "w.npz", **arrays)
    loaded = frontend.load(
        "m", LoadOptions(weights=str(tmp_path / "w.npz")), load_factory(f"{MODELS}:mlp_layernorm")
    )
    np.testing.assert_array_equal(np.asarray(loaded.fc1.kernel.get_value()), arrays["fc1.kernel"])
    del arrays["fc2.bias"]
    arrays["fc9.bias"] = np.zeros(2, np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ModelLoadError, match=r"missing fc2\.bias; unexpected fc9\.bias"):
        frontend.load(
            "m", LoadOptions(weights=str(tmp_path / "bad.npz")), load_factory(f"{MODELS}:mlp_layernorm")
        )
    with pytest.raises(ModelLoadError, match="NNX modules"):
        frontend.load(
            "f", LoadOptions(weights=str(tmp_path / "w.npz")), load_factory(f"{MODELS}:plain_function")
        )


def test_benchmark_runners_give_the_models_outputs(frontend):
    model = frontend.load("m", LoadOptions(), load_factory(f"{MODELS}:conv_batchnorm"))
    feeds = {"x": np.random.default_rng(0).random((4, 12, 12, 3), np.float32)}
    runners = frontend.benchmark_runners(model, feeds)
    assert list(runners) == ["jax eager", "jax.jit"]
    (expected,) = frontend.run(model, feeds)
    for name, runner in runners.items():
        (got,) = runner()
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=name)


def test_reference_cnn_from_canonical_weights_exports_to_the_framework_free_testcase(frontend, tmp_path):
    """The front end's reference CNN (what `convkit matrix` and `convkit train` build) with the canonical
    weights, exported and run in onnxruntime on the stored NCHW inputs transposed to NHWC, gives the stored
    outputs of convkit/reference/data/testcases/reference_cnn within 1e-5; so does JAX itself."""
    assert frontend.reference_layout == "NHWC"
    model = frontend.reference_cnn(load_weights())
    assert frontend.input_names(model) == ["x"]
    fixture = load_factory(f"{MODELS}:reference_cnn")
    assert type(fixture) is type(model), "one ReferenceCNN definition"
    path = tmp_path / "model.onnx"
    spec = InputSpec("x", ["batch", 28, 28, 1])
    frontend.export(model, [spec], {"x": np.zeros((2, 28, 28, 1), np.float32)}, path, ExportOptions())
    session = RuntimeSession(load_onnx(path), SessionOptions(provider="cpu"))
    folders = list_test_data_sets(CASE)
    assert folders
    for folder in folders:
        inputs, outputs = read_test_data_set(folder, ["x"], ["probs"])
        nhwc = {"x": np.ascontiguousarray(inputs["x"].transpose(0, 2, 3, 1))}
        (onnx_probs,) = session.run(nhwc).values()
        (jax_probs,) = frontend.run(model, nhwc)
        onnx_diff = float(np.abs(onnx_probs - outputs["probs"]).max())
        jax_diff = float(np.abs(jax_probs - outputs["probs"]).max())
        assert onnx_diff <= 1e-5 and jax_diff <= 1e-5, (folder.name, onnx_diff, jax_diff)
        print(f"{folder.name}: onnx {onnx_diff:.3g}, jax {jax_diff:.3g} from the framework-free outputs")


def test_reference_cnn_refuses_weights_that_do_not_fit(frontend):
    weights = load_weights()
    weights["fc1.weight"] = weights["fc1.weight"][:, :100]
    with pytest.raises(DataError, match="fc1.weight"):
        frontend.reference_cnn(weights)


def test_training_on_a_subset_is_sane_and_seeded(frontend):
    """One epoch on 320 digits, twice with one seed: progress each epoch, canonical shapes, the same
    weights both times, and the accuracy ``progress`` reported is what the trained model scores."""
    x_train, y_train, x_test, y_test = load_digits()
    data = (x_train[:320], y_train[:320], x_test[:100], y_test[:100])
    seen: list[tuple[int, int, dict[str, float]]] = []
    weights = frontend.train_reference_cnn(data, 1, 7, lambda e, n, m: seen.append((e, n, m)))
    again = frontend.train_reference_cnn(data, 1, 7, lambda *_: None)
    assert [(e, n) for e, n, _ in seen] == [(1, 1)]
    assert set(seen[0][2]) == {"loss", "accuracy", "val_accuracy"}
    assert {name: w.shape for name, w in weights.items()} == SHAPES
    assert all(w.dtype == np.float32 for w in weights.values())
    for name in SHAPES:
        np.testing.assert_array_equal(again[name], weights[name])
    nhwc = np.ascontiguousarray(x_test[:100].transpose(0, 2, 3, 1))
    (probs,) = frontend.run(frontend.reference_cnn(weights), {"x": nhwc})
    accuracy = float((probs.argmax(-1) == y_test[:100]).mean())
    assert accuracy == pytest.approx(seen[0][2]["val_accuracy"])
    assert accuracy > 0.3, accuracy  # chance is 0.1
