"""The Caffe worker's export: a checked deploy net converted to ONNX by caffe2onnx (its prints captured for
the error), and the fixes convkit applies to caffe2onnx's output so that the model is valid at the opset
asked for and computes what Caffe does (inputs renamed, Dropout as Identity, batch-keeping Reshapes, exact
BatchNorm statistics), with its parameter names for the core.

Runs in the Caffe environment only: it imports caffe2onnx, numpy, protobuf and onnx, never convkit; the worker
loads it by path, and it loads ``proto.py`` the same way.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import sys
from collections.abc import Mapping, Sequence
from typing import Any

# NOTE: why this name: protocol.py starts every worker process and registers itself under it (see its main)
import convkit_worker_protocol as protocol

caffe_proto = protocol.load_sibling("proto")
WorkerFailure = protocol.WorkerFailure

# NOTE: why 13 and not lower: caffe2onnx writes Softmax meaning "along axis" (opset 13's Softmax; before 13 it
# flattened the trailing axes), Pad with its pads as an input (opset 11+), and Dropout with a ratio attribute
# (opset <= 11), which ``tidy`` replaces by Identity. Stamped 13 and checked, the graph means what Caffe
# computes; onnx's version converter takes it higher when asked.
DEFAULT_OPSET = 13
# caffe2onnx's parameter suffixes -> the names initializers get (``conv1.weight``, like the other front ends)
_PARAM_SUFFIXES = {
    "_W": "weight",
    "_b": "bias",
    "_B": "bias",
    "_mean": "running_mean",
    "_var": "running_var",
    "_scale": "weight",
    "_bias": "bias",
    "_slope": "weight",
}


def convert(net: Any, shapes: Mapping[str, list[int]]) -> Any:
    """caffe2onnx's model of ``net`` with its inputs declared as ``shapes`` (a batch of one where symbolic).

    NOTE: why capture caffe2onnx's prints: it reports each layer ("convert layer: conv1") and its failures
    on stdout before ``exit(-1)``; the last lines name the layer that failed, and they go to stderr after
    (seen with --verbose).
    """
    import numpy as np

    pb2 = caffe_proto.messages()
    from caffe2onnx.src.caffe2onnx import Caffe2Onnx
    from caffe2onnx.src.utils import freeze

    deploy = pb2.NetParameter()
    deploy.CopyFrom(net.net)
    weights = pb2.NetParameter()
    for layer in deploy.layer:
        if layer.type == "Input":
            del layer.input_param.shape[:]
            layer.input_param.shape.add().dim.extend(shapes[layer.top[0]])
        if layer.type == "Eltwise" and any(float(c) != 1.0 for c in layer.eltwise_param.coeff):
            raise WorkerFailure(
                f"layer {layer.name!r} (Eltwise) has coefficients {list(layer.eltwise_param.coeff)}, which "
                "caffe2onnx drops: its ONNX model would compute a plain sum",
                "fold the coefficients into the layers before it (e.g. a Scale or Power layer)",
                "export",
            )
        if layer.name in net.blobs:
            carrier = weights.layer.add(name=layer.name, type=layer.type)
            for array in net.blobs[layer.name]:
                caffe_proto.fill_blob(carrier.blobs.add(), np.asarray(array))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            model = Caffe2Onnx(deploy, weights, net.net.name or "caffe").createOnnxModel()
            freeze(model)
    except (Exception, SystemExit) as exc:
        lines = [line for line in printed.getvalue().splitlines() if line.strip()]
        layers = [line.split(":", 1)[1].strip() for line in lines if line.startswith("convert layer:")]
        said = [line for line in lines if not line.startswith("convert layer:")]
        detail = said[-1].strip() if said else protocol.first_line(exc)
        where = f" at layer {layers[-1]!r}" if layers else ""
        raise WorkerFailure(
            f"caffe2onnx could not convert the net{where}: {detail}",
            "--verbose shows caffe2onnx's log; the layer's settings may be ones caffe2onnx does not support",
            "export",
        ) from exc
    finally:
        sys.stderr.write(printed.getvalue())
    return model


def tidy(model: Any, net: Any, specs: Sequence[Mapping[str, Any]], opset: int) -> dict[str, str]:
    """Make caffe2onnx's graph a valid opset-``opset`` model with ``specs``' inputs; returns the parameter
    names (initializer -> ``layer.weight`` ...) for the core's ``conform_file``."""
    import onnx
    from onnx import helper

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    # NOTE: why rename: caffe2onnx names each input "<top>_input"; the user, the prototxt and OpenCV call it
    # <top>.
    taken = {name for node in graph.node for name in node.output}
    for value in graph.input:
        top = value.name.removesuffix("_input")
        if top != value.name and top not in taken and top not in initializers:
            for node in graph.node:
                node.input[:] = [top if name == value.name else name for name in node.input]
            value.name = top
    for node in graph.node:
        if node.op_type == "Dropout":
            # NOTE: why: inference ignores Dropout; opset 12 made its ratio an input, and caffe2onnx's
            # attribute form is invalid from there on.
            node.op_type = "Identity"
            del node.attribute[:]
            del node.output[1:]
    _fix_batch_reshapes(graph, initializers, net)
    _exact_batch_norm(graph, initializers, net)
    del graph.value_info[:]
    for value in graph.output:
        value.type.tensor_type.ClearField("shape")
    by_name = {spec["name"]: spec for spec in specs}
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis, want in enumerate(by_name[value.name]["dims"] if value.name in by_name else []):
            if isinstance(want, str) and axis < len(dims):
                dims[axis].Clear()
                dims[axis].dim_param = want
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", DEFAULT_OPSET))
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    model.producer_name = "caffe2onnx"
    model.producer_version = importlib.metadata.version("caffe2onnx")
    if opset != DEFAULT_OPSET:
        model.CopyFrom(onnx.version_converter.convert_version(model, opset))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for value, found in zip(graph.output, inferred.graph.output, strict=True):
        value.type.CopyFrom(found.type)
    onnx.checker.check_model(model, full_check=True)
    return {
        name: f"{name[: -len(suffix)]}.{part}"
        for name in initializers
        for suffix, part in _PARAM_SUFFIXES.items()
        if name.endswith(suffix) and name[: -len(suffix)] in net.blobs
    }


def _fix_batch_reshapes(graph: Any, initializers: Mapping[str, Any], net: Any) -> None:
    """Let Reshape keep the batch: caffe2onnx writes the shape InnerProduct and Flatten flatten to with the
    batch it converted at (``[1, 1600]``); a leading entry equal to it becomes 0 (copy the input's dim).

    NOTE: why: Caffe reshapes a net to any batch (OpenCV does too); the exported model must take a dynamic
    batch like every other front end's.

    NOTE: why the batch of the graph's inputs and not the prototxt's: ``convert`` declares the inputs at the
    shapes it converts at (a batch of one unless ``--input`` fixes it); a deploy net declaring ``dim: 64``
    still gets ``[1, 800]`` written, which the prototxt's 64 would leave in place.
    """
    from onnx import numpy_helper

    tops = {name for name, _ in net.inputs}
    batches = {
        int(value.type.tensor_type.shape.dim[0].dim_value)
        for value in graph.input
        if value.name in tops and value.type.tensor_type.shape.dim
    }
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in initializers:
            continue
        tensor = initializers[node.input[1]]
        shape = numpy_helper.to_array(tensor).copy()
        if shape.ndim == 1 and shape.size and int(shape[0]) in batches and int(shape[0]) > 0:
            shape[0] = 0
            tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))


def _exact_batch_norm(graph: Any, initializers: Mapping[str, Any], net: Any) -> None:
    """Write each BatchNorm's mean and variance as Caffe computes them: the stored sums divided by the scale
    factor (blob 2), 0 when it is 0.

    NOTE: why: caffe2onnx divides the variance by ``factor + 1e-5`` instead of ``factor`` (a relative error of
    1e-5 / factor in every normalized value).
    """
    import numpy as np
    from onnx import numpy_helper

    for node in graph.node:
        if node.op_type != "BatchNormalization" or node.name not in net.blobs:
            continue
        blobs = net.blobs[node.name]
        if len(blobs) != 3:
            continue
        factor = float(np.ravel(blobs[2])[0])
        scale = 0.0 if factor == 0 else 1.0 / factor
        for name, blob in zip(node.input[3:5], blobs[:2], strict=True):
            if name in initializers:
                value = (np.ravel(blob) * np.float32(scale)).astype(np.float32)
                initializers[name].CopyFrom(numpy_helper.from_array(value, name))
