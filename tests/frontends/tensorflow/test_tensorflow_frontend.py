"""The TensorFlow/Keras front end against real TensorFlow, tf2onnx and onnxruntime (no mocks).

Every export is checked the way convkit checks it: onnxruntime against Keras at batch 1 and batch 3.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TESTCASES
from conftest import run_convkit as run_convkit_here
from onnx import numpy_helper

from convkit.frontends import frontend_info

# NOTE: why not pytest.importorskip: importing TensorFlow here would print its banners; the front end imports
# it quietly, and that is under test too.
for _package in ("tensorflow", "keras", "tf2onnx"):
    if importlib.util.find_spec(_package) is None:
        pytest.skip(
            f"{_package} is not installed (pip install 'convkit[tensorflow]')", allow_module_level=True
        )

from convkit.core.artifacts import list_test_data_sets, read_test_data_set  # noqa: E402
from convkit.core.compare import compare_arrays, compare_outputs  # noqa: E402
from convkit.core.inputs import InputSpec, make_static, random_inputs, verification_data_sets  # noqa: E402
from convkit.core.runtime import RuntimeSession  # noqa: E402
from convkit.core.sources import load_factory  # noqa: E402
from convkit.errors import (  # noqa: E402
    DataError,
    ExportError,
    InputFileError,
    ModelLoadError,
    UnsafeModelError,
    UnsupportedModelError,
)
from convkit.frontends import (  # noqa: E402
    ExportOptions,
    LoadOptions,
    resolve_source,
)
from convkit.frontends import tensorflow as tf_frontend  # noqa: E402
from convkit.frontends.tensorflow import layers as tf_layers  # noqa: E402
from convkit.graph import conform as conform_module  # noqa: E402
from convkit.graph.model import load_onnx  # noqa: E402
from convkit.reference.cnn import SHAPES, load_digits, load_weights  # noqa: E402

pytestmark = pytest.mark.tensorflow

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "fixtures" / "models" / "keras_models.py"
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def frontend() -> tf_frontend.TensorFlowFrontend:
    fe = tf_frontend.TensorFlowFrontend()
    reason = fe.is_available()
    if reason is not None:
        pytest.skip(f"TensorFlow front end unavailable: {reason}")
    return fe


@pytest.fixture(scope="module")
def keras(frontend):
    import keras

    return keras


def test_identity_versions_and_claimed_paths(frontend, tmp_path):
    info = frontend_info(frontend.name)  # the registry holds the framework's identity
    assert (frontend.name, info.aliases, info.extra) == ("tensorflow", ("keras", "tf"), "tensorflow")
    assert set(frontend.versions()) == {"tensorflow", "keras", "tf2onnx"}
    for name, claimed in [
        ("m.keras", True),
        ("m.h5", True),
        ("m.HDF5", True),
        ("m.onnx", False),
        ("m.pt2", False),
    ]:
        assert frontend.claims_path(Path(name)) is claimed
    assert not frontend.claims_path(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert frontend.claims_path(tmp_path)


def factory(frontend, name: str):
    source = f"{MODELS}:{name}"
    return frontend.load(source, LoadOptions(), load_factory(source))


def export_and_verify(frontend, model, specs, path: Path, options: ExportOptions | None = None):
    """Export, then compare onnxruntime with the front end at every verification size; returns the
    session and the largest absolute difference."""
    example = random_inputs(specs)
    result = frontend.export(model, specs, example, path, options or ExportOptions())
    session = RuntimeSession(load_onnx(path))
    worst = 0.0
    for label, feeds in verification_data_sets(specs):
        expected = frontend.run(model, feeds)
        assert len(expected) == len(session.outputs)
        actual = session.run(feeds)
        named = dict(zip(actual, expected, strict=True))
        for comparison in compare_outputs(named, actual, data_set=label):
            assert comparison.passed, comparison
            worst = max(worst, comparison.max_abs_diff or 0.0)
    return result, session, worst


def dims(values) -> dict[str, list]:
    return {value.name: list(value.shape) for value in values}


EXPECTED = {
    "reference_cnn": ({"x": ["batch", 28, 28, 1]}, {"probs": ["batch", 10]}),
    "two_input_functional": (
        {"image": ["batch", 8, 8, 3], "meta": ["batch", 5]},
        {"probs": ["batch", 3], "score": ["batch", 1]},
    ),
    "gru_model": ({"seq": ["batch", "seq_dim1", 8]}, {"logits": ["batch", 4]}),
    "sequential_bn_dropout": ({"features": ["batch", 16]}, {"logits": ["batch", 4]}),
    "tiny_mobilenet": ({"input": ["batch", 32, 32, 3]}, {"predictions": ["batch", 10]}),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_fixture_model_exports_with_parity(frontend, tmp_path, name):
    model = factory(frontend, name)
    inputs, outputs = EXPECTED[name]
    specs = frontend.input_specs(model)
    assert frontend.input_names(model) == list(inputs)
    assert {spec.name: spec.dims for spec in specs} == inputs
    result, session, worst = export_and_verify(frontend, model, specs, tmp_path / "model.onnx")
    assert result.exporter.startswith("tf2onnx ")
    assert result.opset == tf_frontend.DEFAULT_OPSET == session.opset
    assert dims(session.inputs) == inputs
    assert dims(session.outputs) == outputs
    print(f"{name}: max abs diff {worst:.3g}")


def test_subclassed_model_takes_user_specs(frontend, tmp_path):
    model = factory(frontend, "subclassed_model")
    assert frontend.input_names(model) is None
    assert frontend.input_specs(model) is None
    specs = [InputSpec("x", ["batch", 6])]
    result, session, worst = export_and_verify(frontend, model, specs, tmp_path / "model.onnx")
    assert any("subclassed" in note for note in result.notes)
    assert dims(session.inputs) == {"x": ["batch", 6]}
    assert dims(session.outputs) == {"output": ["batch", 3]}
    print(f"subclassed_model: max abs diff {worst:.3g}")


def test_subclassed_model_weights_are_the_same_in_every_process(frontend):
    feeds = {"x": np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6)}
    first = frontend.run(factory(frontend, "subclassed_model"), feeds)[0]
    second = frontend.run(factory(frontend, "subclassed_model"), feeds)[0]
    np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-7)  # other seeds differ by ~0.1


def test_static_export_fixes_every_dimension(frontend, tmp_path):
    model = factory(frontend, "two_input_functional")
    specs = make_static(frontend.input_specs(model), 3)
    _, session, _ = export_and_verify(frontend, model, specs, tmp_path / "model.onnx")
    assert dims(session.inputs) == {"image": [3, 8, 8, 3], "meta": [3, 5]}
    assert dims(session.outputs) == {"probs": [3, 3], "score": [3, 1]}


def test_reference_cnn_computes_the_bundled_testcase(frontend):
    """The Keras reference CNN carries the canonical weights: on the same images (NHWC) it gives the
    outputs stored in the reference_cnn test case, which onnx's reference evaluator computed."""
    model = factory(frontend, "reference_cnn")
    case = TESTCASES / "reference_cnn"
    for folder in list_test_data_sets(case):
        inputs, outputs = read_test_data_set(folder, ["x"], ["probs"])
        (probs,) = frontend.run(model, {"x": inputs["x"].transpose(0, 2, 3, 1)})
        np.testing.assert_allclose(probs, outputs["probs"], atol=ATOL, rtol=RTOL)


def test_keras_file_round_trip(frontend, tmp_path):
    path = tmp_path / "cnn.keras"
    factory(frontend, "reference_cnn").save(path)
    resolved, preloaded = resolve_source(str(path), None)
    assert resolved.name == "tensorflow" and preloaded is None
    model = resolved.load(str(path), LoadOptions())
    specs = resolved.input_specs(model)
    assert [spec.describe() for spec in specs] == ["x:batch,28,28,1:float32"]
    _, _, worst = export_and_verify(resolved, model, specs, tmp_path / "model.onnx")
    print(f".keras reference_cnn: max abs diff {worst:.3g}")


def test_h5_file_round_trip(frontend, tmp_path):
    path = tmp_path / "seq.h5"
    original = factory(frontend, "sequential_bn_dropout")
    original.save(path)
    assert frontend.claims_path(path)
    model = frontend.load(str(path), LoadOptions())
    feeds = random_inputs(frontend.input_specs(model), 3)
    np.testing.assert_array_equal(frontend.run(model, feeds)[0], frontend.run(original, feeds)[0])
    export_and_verify(frontend, model, frontend.input_specs(model), tmp_path / "model.onnx")


def test_saved_model_folder(frontend, tmp_path):
    keras_model = factory(frontend, "two_input_functional")
    folder = tmp_path / "saved"
    keras_model.export(str(folder), verbose=False)
    assert frontend.claims_path(folder)
    resolved, _ = resolve_source(str(folder), None)
    assert resolved.name == "tensorflow"
    model = frontend.load(str(folder), LoadOptions())
    assert isinstance(model, tf_frontend.SavedModelSignature)
    assert frontend.input_names(model) == ["image", "meta"]
    specs = frontend.input_specs(model)
    assert [spec.describe() for spec in specs] == ["image:batch,8,8,3:float32", "meta:batch,5:float32"]
    feeds = random_inputs(specs, 3)
    for got, want in zip(frontend.run(model, feeds), frontend.run(keras_model, feeds), strict=True):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)
    _, session, worst = export_and_verify(frontend, model, specs, tmp_path / "model.onnx")
    assert dims(session.outputs) == {"output_0": ["batch", 3], "output_1": ["batch", 1]}
    print(f"SavedModel two_input_functional: max abs diff {worst:.3g}")


def test_lambda_layer_needs_the_unsafe_flag(frontend, keras, tmp_path):
    x = keras.Input((3,), name="x")
    path = tmp_path / "lambda.keras"
    keras.Model(x, keras.layers.Lambda(lambda t: t * 2.0 + 1.0)(x)).save(path)
    with pytest.raises(UnsafeModelError) as refused:
        frontend.load(str(path), LoadOptions())
    assert "--unsafe-allow-pickle" in str(refused.value) and str(path) in str(refused.value)
    model = frontend.load(str(path), LoadOptions(unsafe_pickle=True))
    np.testing.assert_allclose(frontend.run(model, {"x": np.ones((1, 3), np.float32)})[0], [[3.0, 3.0, 3.0]])
    export_and_verify(frontend, model, frontend.input_specs(model), tmp_path / "model.onnx")


def test_weights_file_is_loaded_into_the_model(frontend, tmp_path):
    trained = factory(frontend, "sequential_bn_dropout")
    trained.set_weights([w + 0.25 for w in trained.get_weights()])
    weights = tmp_path / "trained.weights.h5"
    trained.save_weights(weights)
    source = f"{MODELS}:sequential_bn_dropout"
    model = frontend.load(source, LoadOptions(weights=str(weights)), load_factory(source))
    feeds = random_inputs(frontend.input_specs(model), 3)
    np.testing.assert_array_equal(frontend.run(model, feeds)[0], frontend.run(trained, feeds)[0])
    with pytest.raises(ModelLoadError, match="holds weights only"):
        frontend.load(str(weights), LoadOptions())
    with pytest.raises(InputFileError, match="missing.weights.h5"):
        frontend.load(source, LoadOptions(weights=str(tmp_path / "missing.weights.h5")), load_factory(source))


def test_bad_sources_are_clear_errors(frontend, tmp_path):
    with pytest.raises(InputFileError, match="nothere.keras"):
        frontend.load(str(tmp_path / "nothere.keras"), LoadOptions())
    for name in ("corrupt.keras", "corrupt.h5"):
        bad = tmp_path / name
        bad.write_bytes(b"not a model" * 20)
        with pytest.raises(ModelLoadError, match=name):
            frontend.load(str(bad), LoadOptions())
    truncated = tmp_path / "truncated.keras"
    factory(frontend, "sequential_bn_dropout").save(tmp_path / "whole.keras")
    truncated.write_bytes((tmp_path / "whole.keras").read_bytes()[:300])
    with pytest.raises(ModelLoadError, match="truncated.keras"):
        frontend.load(str(truncated), LoadOptions())
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputFileError, match="saved_model.pb"):
        frontend.load(str(tmp_path / "folder"), LoadOptions())
    with pytest.raises(UnsupportedModelError, match="not a Keras model"):
        frontend.load("x.py:f", LoadOptions(), preloaded=object())


def test_unknown_custom_class_names_the_fix(frontend, tmp_path):
    model = factory(frontend, "subclassed_model")
    frontend.run(model, {"x": np.zeros((1, 6), np.float32)})
    path = tmp_path / "custom.keras"
    model.save(path)
    with pytest.raises(ModelLoadError, match="custom.keras") as failed:
        frontend.load(str(path), LoadOptions())
    assert "register_keras_serializable" in str(failed.value)


def test_wrong_input_shape_is_a_data_error(frontend):
    model = factory(frontend, "sequential_bn_dropout")
    with pytest.raises(DataError):
        frontend.run(model, {"features": np.zeros((2, 7), np.float32)})


def test_opset_beyond_tf2onnx_is_refused(frontend, tmp_path):
    model = factory(frontend, "sequential_bn_dropout")
    specs = frontend.input_specs(model)
    with pytest.raises(UnsupportedModelError, match="opset 20") as refused:
        frontend.export(model, specs, random_inputs(specs), tmp_path / "m.onnx", ExportOptions(opset=20))
    assert "--opset 18" in str(refused.value)
    with pytest.raises(UnsupportedModelError, match="--opset 7"):
        frontend.export(model, specs, random_inputs(specs), tmp_path / "m.onnx", ExportOptions(opset=6))
    assert not (tmp_path / "m.onnx").exists()
    result, session, _ = export_and_verify(
        frontend, model, specs, tmp_path / "m.onnx", ExportOptions(opset=18)
    )
    assert result.opset == session.opset == 18
    with pytest.raises(ExportError, match="dynamo"):
        frontend.export(
            model, specs, random_inputs(specs), tmp_path / "m.onnx", ExportOptions(exporter="dynamo")
        )


def test_ops_without_onnx_equivalent_are_named(frontend, keras, tmp_path):
    import tensorflow as tf

    class LogGamma(keras.layers.Layer):
        def call(self, t):
            return tf.math.lgamma(tf.abs(t) + 1.0)

    x = keras.Input((4,), name="x")
    model = keras.Model(x, LogGamma()(x))
    specs = frontend.input_specs(model)
    with pytest.raises(UnsupportedModelError, match="Lgamma"):
        frontend.export(model, specs, random_inputs(specs), tmp_path / "m.onnx", ExportOptions())


def test_tampered_model_no_longer_matches(frontend, tmp_path):
    model = factory(frontend, "sequential_bn_dropout")
    specs = frontend.input_specs(model)
    path = tmp_path / "model.onnx"
    export_and_verify(frontend, model, specs, path)
    proto = onnx.load(path)
    weight = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    value = numpy_helper.to_array(weight).copy()
    value.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(value, weight.name))
    onnx.save(proto, path)
    feeds = random_inputs(specs, 3)
    actual = RuntimeSession(load_onnx(path)).run(feeds)["logits"]
    assert not compare_arrays("logits", frontend.run(model, feeds)[0], actual).passed


def test_export_prints_nothing(frontend, tmp_path, capfd):
    model = factory(frontend, "two_input_functional")
    specs = frontend.input_specs(model)
    capfd.readouterr()
    frontend.export(model, specs, random_inputs(specs), tmp_path / "model.onnx", ExportOptions())
    frontend.run(model, random_inputs(specs))
    assert capfd.readouterr() == ("", "")


def test_first_import_of_tensorflow_is_quiet():
    """TensorFlow writes oneDNN and CPU-feature banners to fd 2 on first import; the front end hides them."""
    import subprocess

    code = (
        "from convkit.frontends.tensorflow import TensorFlowFrontend\n"
        "fe = TensorFlowFrontend()\n"
        "assert fe.is_available() is None\n"
        "fe.versions()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")


def test_large_model_path_writes_external_data(frontend, tmp_path, monkeypatch):
    """Forced onto tf2onnx's large-model path (external tensors), which calls np.product under NumPy 2."""
    monkeypatch.setattr(conform_module, "EXTERNAL_DATA_THRESHOLD", 0)
    model = factory(frontend, "reference_cnn")
    result, _, worst = export_and_verify(frontend, model, frontend.input_specs(model), tmp_path / "m.onnx")
    assert load_onnx(tmp_path / "m.onnx").external_files == ["m.onnx.data"]
    assert any("m.onnx.data" in note for note in result.notes)
    assert not hasattr(np, "product") or np.__version__.startswith("1.")
    print(f"large-model path reference_cnn: max abs diff {worst:.3g}")


def test_cli_export_then_verify_as_a_user_does(tmp_path):
    """``convkit export`` then ``convkit verify --source`` in fresh processes; tampering makes verify fail."""
    # NOTE: why fresh processes: this framework's one end-to-end run of ``python -m convkit``.
    import subprocess

    def convkit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "convkit", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )

    source = f"{MODELS.relative_to(ROOT)}:reference_cnn"
    out = tmp_path / "out" / "model.onnx"
    exported = convkit("export", source, "-o", str(out), "--framework", "keras")
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "tf2onnx" in exported.stdout and "oneDNN" not in exported.stdout
    assert (out.parent / "test_data_set_0" / "input_0.pb").is_file()
    verified = convkit("verify", str(out), "--source", source, "--framework", "keras")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    stored = convkit("verify", str(out.parent))
    assert stored.returncode == 0, stored.stdout + stored.stderr

    tampered = tmp_path / "tampered"
    shutil.copytree(out.parent, tampered)
    proto = onnx.load(tampered / "model.onnx")
    bias = next(t for t in proto.graph.initializer if tuple(t.dims) == (10,))
    value = numpy_helper.to_array(bias).copy()
    value.flat[0] += 2.0
    bias.CopyFrom(numpy_helper.from_array(value, bias.name))
    onnx.save(proto, tampered / "model.onnx")
    failed = convkit("verify", str(tampered / "model.onnx"), "--source", source, "--framework", "keras")
    assert failed.returncode == 1, failed.stdout + failed.stderr


# ------------------------------------------------------------ reference CNN, training, bench, layers


def run_convkit(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``convkit ARGS`` run in this interpreter (``conftest.run_convkit``), from the repository root."""
    return run_convkit_here(*args, cwd=cwd, timeout=300)


def test_reference_cnn_from_canonical_weights_computes_the_testcase(frontend):
    """The front end's reference CNN (what `convkit matrix` and `convkit train` use) with the canonical
    weights gives the stored outputs of the reference_cnn test case on the same images in NHWC."""
    assert frontend.reference_layout == "NHWC"
    model = frontend.reference_cnn(load_weights())
    assert frontend.input_names(model) == ["x"]
    assert [spec.dims for spec in frontend.input_specs(model)] == [["batch", 28, 28, 1]]
    assert tf_frontend._keras_output_names(model) == ["probs"]
    case = TESTCASES / "reference_cnn"
    folders = list_test_data_sets(case)
    assert folders
    for folder in folders:
        inputs, outputs = read_test_data_set(folder, ["x"], ["probs"])
        (probs,) = frontend.run(model, {"x": inputs["x"].transpose(0, 2, 3, 1)})
        np.testing.assert_allclose(probs, outputs["probs"], atol=ATOL, rtol=RTOL)


def test_training_on_a_subset_is_sane_and_seeded(frontend):
    """Two epochs on 400 digits: progress each epoch, canonical shapes, better than chance, reproducible."""
    x_train, y_train, x_test, y_test = load_digits()
    data = (x_train[:400], y_train[:400], x_test[:200], y_test[:200])
    seen: list[tuple[int, int, dict[str, float]]] = []
    weights = frontend.train_reference_cnn(data, 2, 7, lambda e, n, m: seen.append((e, n, m)))
    assert [(e, n) for e, n, _ in seen] == [(1, 2), (2, 2)]
    assert all(set(m) == {"loss", "accuracy", "val_accuracy"} for _, _, m in seen)
    assert seen[-1][2]["loss"] < seen[0][2]["loss"]
    assert {name: w.shape for name, w in weights.items()} == SHAPES
    assert all(w.dtype == np.float32 for w in weights.values())
    probs = frontend.run(
        frontend.reference_cnn(weights), {"x": np.ascontiguousarray(x_test.transpose(0, 2, 3, 1))}
    )
    accuracy = float((probs[0].argmax(-1) == y_test).mean())
    assert accuracy > 0.3, accuracy  # chance is 0.1
    again = frontend.train_reference_cnn(data, 2, 7, lambda *_: None)
    for name in SHAPES:
        np.testing.assert_array_equal(again[name], weights[name])
    print(f"2 epochs on 400 digits: test accuracy {accuracy:.3f}")


def test_benchmark_runners_compute_the_model(frontend):
    model = factory(frontend, "two_input_functional")
    feeds = random_inputs(frontend.input_specs(model), 4)
    runners = frontend.benchmark_runners(model, feeds)
    assert list(runners) == ["keras eager", "keras tf.function"]
    expected = frontend.run(model, feeds)
    for name, run in runners.items():
        got = run()
        assert len(got) == len(expected), name
        for a, b in zip(got, expected, strict=True):
            assert isinstance(a, np.ndarray)
            np.testing.assert_allclose(a, b, atol=ATOL, rtol=RTOL, err_msg=name)


@pytest.fixture(scope="module")
def reference_export(frontend, tmp_path_factory):
    """The reference CNN exported once; (model, path)."""
    model = factory(frontend, "reference_cnn")
    path = tmp_path_factory.mktemp("reference") / "model.onnx"
    specs = frontend.input_specs(model)
    frontend.export(model, specs, random_inputs(specs), path, ExportOptions())
    return model, path


REFERENCE_LAYERS = {
    "conv1": (32, 26, 26),
    "pool1": (32, 13, 13),
    "conv2": (64, 11, 11),
    "pool2": (64, 5, 5),
    "flatten": (1600,),
    "fc1": (128,),
    "probs": (10,),
}


def test_layer_outputs_pair_every_computing_layer(frontend, reference_export):
    """Every layer but the input and the inference-time Dropout, in order; convolution outputs are paired
    with tf2onnx's channels-first values (activations transposed to match), and each equals onnxruntime's."""
    model, path = reference_export
    proto = onnx.load(path)
    feeds = random_inputs(frontend.input_specs(model), 2)
    pairs = frontend.layer_outputs(model, proto, feeds)
    assert {p.layer: p.value.shape[1:] for p in pairs} == REFERENCE_LAYERS
    assert [p.layer for p in pairs] == list(REFERENCE_LAYERS)
    assert all(f"/{p.layer}" in p.onnx_value or p.onnx_value == "probs" for p in pairs)
    from convkit.diagnose.localize import onnxruntime_evaluator

    values = onnxruntime_evaluator(proto)([p.onnx_value for p in pairs], feeds)
    for pair, value in zip(pairs, values, strict=True):
        assert compare_arrays(pair.onnx_value, pair.value, value).passed, pair.layer


def test_layer_outputs_without_a_fresh_export_pair_by_shape(frontend, reference_export, monkeypatch):
    model, path = reference_export
    feeds = random_inputs(frontend.input_specs(model), 2)
    checked = frontend.layer_outputs(model, onnx.load(path), feeds)
    monkeypatch.setattr(tf_layers, "_fresh_export", lambda *args: None)
    by_shape = frontend.layer_outputs(model, onnx.load(path), feeds)
    assert [(p.layer, p.onnx_value) for p in by_shape] == [(p.layer, p.onnx_value) for p in checked]


def test_layer_outputs_drop_pairings_a_faithful_export_does_not_reproduce(
    frontend, reference_export, monkeypatch
):
    """A value in a layer's scope that a faithful export computes differently from the layer (here: the last
    layer's bias changed in the "fresh" export) is not that layer's output, and is left out."""
    model, path = reference_export
    fresh = onnx.load(path)
    bias = next(t for t in fresh.graph.initializer if tuple(t.dims) == (10,))
    # NOTE: why not one constant: softmax is blind to a shift common to all logits
    changed = numpy_helper.to_array(bias) + np.linspace(0, 1, 10, dtype=np.float32)
    bias.CopyFrom(numpy_helper.from_array(changed, bias.name))
    monkeypatch.setattr(tf_layers, "_fresh_export", lambda *args: fresh)
    pairs = frontend.layer_outputs(model, onnx.load(path), random_inputs(frontend.input_specs(model), 2))
    assert [p.layer for p in pairs] == list(REFERENCE_LAYERS)[:-1]


def test_name_scopes_resolve_to_layers():
    """TensorFlow makes each layer's scope unique (``conv2_1``); a suffixed match wins over an exact one."""
    names = ["dense", "dense_1", "conv2", "relu"]
    assert tf_layers._scope_of("conv2_1", names) == "conv2"
    assert tf_layers._scope_of("conv2", names) == "conv2"
    assert tf_layers._scope_of("dense_1", names) == "dense"
    assert tf_layers._scope_of("dense_1_1", names) == "dense_1"
    assert tf_layers._scope_of("Relu", names) is None
    assert tf_layers._scope_of("conv2_x", names) is None


def test_layer_outputs_of_models_without_layers_are_empty(frontend):
    model = factory(frontend, "subclassed_model")
    assert frontend.layer_outputs(model, onnx.ModelProto(), {"x": np.zeros((2, 6), np.float32)}) == []


def test_healthy_mobilenet_localizes_to_nothing(frontend, tmp_path):
    """tf2onnx folds each BatchNormalization into the Conv before it (the Conv then carries the
    BatchNormalization's name): no pairing may make a faithful export look wrong."""
    from convkit.diagnose.localize import localize_against_framework

    model = factory(frontend, "tiny_mobilenet")
    specs = frontend.input_specs(model)
    frontend.export(model, specs, random_inputs(specs), tmp_path / "m.onnx", ExportOptions())
    found = localize_against_framework(
        load_onnx(tmp_path / "m.onnx"), frontend, model, random_inputs(specs, 2)
    )
    assert found.first is None, found.describe()
    assert found.checked_values > 50


@pytest.mark.parametrize(
    ("fault", "layer"), [("conv2 bias", "conv2"), ("fc1 LeakyRelu", "fc1")], ids=["conv2-bias", "fc1-leaky"]
)
def test_cli_localize_names_the_faulty_layer(reference_export, tmp_path, fault, layer):
    """A fault planted in the exported file is found by `convkit verify --localize` against Keras' own
    layers, and named by its Keras layer."""
    _, path = reference_export
    proto = onnx.load(path)
    if fault == "conv2 bias":
        conv = next(n for n in proto.graph.node if n.op_type == "Conv" and "/conv2" in n.name)
        bias = next(t for t in proto.graph.initializer if t.name == conv.input[2])
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, bias.name))
    else:
        relu = next(n for n in proto.graph.node if n.op_type == "Relu" and "/fc1" in n.name)
        relu.op_type = "LeakyRelu"
        relu.attribute.append(onnx.helper.make_attribute("alpha", 0.2))
    faulty = tmp_path / "faulty.onnx"
    onnx.save(proto, faulty)
    report = tmp_path / "r.json"
    source = f"{MODELS.relative_to(ROOT)}:reference_cnn"
    done = run_convkit(
        "verify",
        str(faulty),
        "--source",
        source,
        "--framework",
        "keras",
        "--localize",
        "--report",
        str(report),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    found = json.loads(report.read_text())["localization"]
    assert found["oracle"] == "tensorflow layers"
    assert found["first_divergence"]["source"] == layer, found
    assert f"layer '{layer}'" in done.stdout


def test_cli_matrix_passes_for_tensorflow(tmp_path):
    done = run_convkit(
        "matrix", "--frameworks", "tensorflow", "--json", str(tmp_path / "m.json"), "--out-dir", str(tmp_path)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["framework"]: row for row in json.loads((tmp_path / "m.json").read_text())["frameworks"]}
    assert rows["tensorflow"]["status"] == "pass", rows
    assert (tmp_path / "tensorflow" / "model.onnx").is_file()


def test_cli_train_then_matrix_with_the_trained_weights(tmp_path):
    weights = tmp_path / "w.npz"
    trained = run_convkit("train", "--framework", "keras", "--epochs", "1", "-o", str(weights))
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "test accuracy" in trained.stdout
    assert {name: w.shape for name, w in load_weights(weights).items()} == SHAPES
    matrix = run_convkit(
        "matrix", "--frameworks", "tensorflow", "--weights", str(weights), "--out-dir", str(tmp_path / "mx")
    )
    assert matrix.returncode == 0, matrix.stdout + matrix.stderr
    assert "PASS" in matrix.stdout
