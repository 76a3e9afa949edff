"""``convkit.graph.conform`` on hand-built ONNX protos, with no framework installed: each pass, then the
whole pass run as an exporter's output goes through it, checked with onnxruntime before and after."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convkit.core.inputs import InputSpec, parse_input_spec
from convkit.core.runtime import RuntimeSession, SessionOptions
from convkit.errors import ExportError
from convkit.graph import conform as conform_module
from convkit.graph.conform import (
    FixedDimMessage,
    apply_input_specs,
    conform,
    conform_file,
    constants_to_initializers,
    initializers_out_of_inputs,
    name_output_dims,
    name_outputs,
    save,
)
from convkit.graph.model import load_onnx

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def _exported(input_dims: list, output_dims: list, *, weight_as_constant: bool = False) -> onnx.ModelProto:
    """``y = x @ W`` as an exporter might write it: input ``ph:0``, output ``Identity:0``."""
    weight = numpy_helper.from_array(W, "w")
    nodes = [helper.make_node("MatMul", ["ph:0", "w"], ["Identity:0"], name="matmul")]
    initializers = [weight]
    if weight_as_constant:
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=weight))
        initializers = []
    graph = helper.make_graph(
        nodes,
        "exported",
        [helper.make_tensor_value_info("ph:0", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, output_dims)],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _run(model: onnx.ModelProto, tmp_path, x: np.ndarray) -> dict[str, np.ndarray]:
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    session = RuntimeSession(load_onnx(path), SessionOptions(provider="cpu"))
    return session.run({model.graph.input[0].name: x})


def test_conform_names_inputs_outputs_and_dims_after_the_specs_and_keeps_the_numbers(tmp_path):
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    model = _exported(["unk__1", 4], ["unk__2", 3])
    before = _run(model, tmp_path, x)["Identity:0"]
    specs = [parse_input_spec("x:batch,4")]
    notes = conform(
        model,
        specs,
        exporter="tf2onnx",
        input_names={"ph": "x"},
        output_names=["y"],
        batch_leads_outputs=True,
    )
    assert notes == []
    assert [value.name for value in model.graph.input] == ["x"]
    assert [value.name for value in model.graph.output] == ["y"]
    assert _dims(model.graph.input[0]) == ["batch", 4]
    assert _dims(model.graph.output[0]) == ["batch", 3]
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, tmp_path, x)["y"], before, rtol=1e-6)


def test_an_exporter_that_fixed_a_dynamic_dim_is_named_with_the_fix():
    model = _exported([2, 4], [2, 3])
    with pytest.raises(ExportError) as caught:
        conform(
            model,
            [parse_input_spec("x:batch,4")],
            exporter="torch.export",
            input_names={"ph": "x"},
            fixed_dim=FixedDimMessage("the .pt2 was exported with that size fixed", "re-export the .pt2"),
        )
    error = caught.value
    assert error.message == (
        "torch.export fixed dimension 0 (batch) of input 'x' to 2: the .pt2 was exported with that size fixed"
    )
    assert error.hint == (
        "give that size in --input (e.g. x:2,4), or use --data with --static; or re-export the .pt2"
    )


def test_the_exporters_dim_names_become_the_users_also_inside_expressions():
    model = _exported(["s0", 4], ["2*s0", 3])
    renames = apply_input_specs(model.graph, [InputSpec("ph:0", ["batch", 4])], "e", FixedDimMessage())
    assert renames == {"s0": "batch"}
    name_output_dims(model.graph, renames)
    assert _dims(model.graph.output[0]) == ["2*batch", 3]


def test_output_dims_the_exporter_alone_named_get_the_outputs_name():
    model = _exported(["batch", 4], ["unk__7", None])
    name_output_dims(model.graph, {})
    assert _dims(model.graph.output[0]) == ["Identity_0_dim0", "Identity_0_dim1"]


def test_an_input_the_exporter_dropped_is_added_back_with_the_specs_type_and_shape():
    model = _exported(["n", 4], ["n", 3])
    apply_input_specs(
        model.graph,
        [InputSpec("ph:0", ["n", 4]), parse_input_spec("mask:n,7:int64")],
        "e",
        FixedDimMessage(),
    )
    added = model.graph.input[1]
    assert added.name == "mask" and added.type.tensor_type.elem_type == TensorProto.INT64
    assert _dims(added) == ["n", 7]


def test_an_output_that_is_also_an_input_gets_an_identity_and_a_taken_name_is_moved_aside(tmp_path):
    model = _exported(["n", 4], ["n", 3])
    model.graph.output.append(helper.make_tensor_value_info("ph:0", TensorProto.FLOAT, ["n", 4]))
    model.graph.node[0].output[0] = "y"  # an internal value already holds a wanted name
    model.graph.output[0].name = "y"
    name_outputs(model.graph, ["z", "y2"], {"ph:0"}, "e")
    assert [value.name for value in model.graph.output] == ["z", "y2"]
    assert any(node.op_type == "Identity" and list(node.output) == ["y2"] for node in model.graph.node)
    x = np.ones((2, 4), np.float32)
    outputs = _run(model, tmp_path, x)
    np.testing.assert_array_equal(outputs["y2"], x)
    with pytest.raises(ExportError, match="wrote 2 outputs where the model returns 1"):
        name_outputs(model.graph, ["only"], set(), "e")


def test_constants_become_initializers_and_initializer_inputs_are_dropped():
    model = _exported(["n", 4], ["n", 3], weight_as_constant=True)
    assert constants_to_initializers(model) == 1
    assert [tensor.name for tensor in model.graph.initializer] == ["w"]
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]))
    assert initializers_out_of_inputs(model) == [
        "removed 1 initializer(s) from the graph inputs, so that onnxruntime can fold them"
    ]
    assert [value.name for value in model.graph.input] == ["ph:0"]


def test_a_large_model_is_saved_with_aligned_external_data_and_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(conform_module, "EXTERNAL_DATA_THRESHOLD", 0)
    big = np.random.default_rng(1).random((512, 3), dtype=np.float32)
    model = _exported(["n", 512], ["n", 3])
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(big, "w"))
    path = tmp_path / "big.onnx"
    assert save(model, path) == "big.onnx.data"
    loaded = load_onnx(path)
    assert loaded.external_files == ["big.onnx.data"]
    x = np.ones((2, 512), np.float32)
    got = RuntimeSession(loaded, SessionOptions(provider="cpu")).run({"ph:0": x})["Identity:0"]
    np.testing.assert_allclose(got, x @ big, rtol=1e-5)


def test_a_small_model_is_one_file(tmp_path):
    path = tmp_path / "small.onnx"
    assert save(_exported(["n", 4], ["n", 3]), path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx"]


def test_conform_file_tidies_a_workers_file(tmp_path):
    raw = tmp_path / "raw.onnx"
    model = _exported(["DynamicDimension.0", 4], ["DynamicDimension.0", 3], weight_as_constant=True)
    model.graph.node[0].output[0] = "linear_0.w_0"
    model.graph.node[1].input[1] = "linear_0.w_0"
    onnx.save(model, raw)
    opset, notes = conform_file(
        raw,
        tmp_path / "done.onnx",
        [InputSpec("ph:0", ["batch", 4])],
        exporter="paddle2onnx",
        initializer_names={"linear_0.w_0": "fc.weight"},
        requested_opset=13,
        exporter_version="2.1",
    )
    done = onnx.load(tmp_path / "done.onnx")
    assert opset == 17 and notes == ["paddle2onnx wrote opset 17 (asked for 13)"]
    assert [t.name for t in done.graph.initializer] == ["fc.weight"]
    assert [v.name for v in done.graph.output] == ["output"]
    assert _dims(done.graph.output[0]) == ["batch", 3]
    assert (done.producer_name, done.producer_version) == ("paddle2onnx", "2.1")
