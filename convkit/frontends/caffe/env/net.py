"""A Caffe deploy net read and checked before anything converts or runs it: the prototxt parsed (with its line
numbers on error), normalized (``Input`` layers first, training-phase layers left out), its layers checked
against what caffe2onnx converts, and the ``.caffemodel``'s blobs checked against the shapes the prototxt
makes.

Runs in the Caffe environment only, with numpy and protobuf; the worker loads it by path. Failures are
``NetProblem(message, hint)``: one line each, which the worker turns into its own errors.

NOTE: why check here: caffe2onnx reports a layer it cannot convert by printing and calling ``exit(-1)``,
crashes with a ``KeyError`` or builds a wrong graph when a blob is missing or misshapen, and OpenCV answers
with a C++ assertion (``srcMat.cols == weights.cols``); the user needs the layer's name and what to fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# NOTE: why this list: the layer types caffe2onnx 2.0.1 converts (Caffe2Onnx.GenerateOnnxNodeList); any other
# type would end the conversion with "Failed type not support" and exit(-1). Word lists (SIM905 off):
# they read better than 30 quoted names.
CONVERTIBLE = frozenset(
    "Axpy BN BatchNorm Concat Convolution ConvolutionDepthwise Crop Deconvolution DetectionOutput "  # noqa: SIM905
    "Dropout Eltwise Flatten InnerProduct Interp LRN Log MVN MaxUnpool Normalize PReLU Permute Pooling "
    "Power PriorBox ReLU ReLU6 Reshape Scale ShuffleChannel Sigmoid Slice Softmax TanH Upsample".split()
)
TRAINING_ONLY = frozenset(
    "Accuracy ContrastiveLoss Data DummyData EuclideanLoss HDF5Data HDF5Output HingeLoss ImageData "  # noqa: SIM905
    "InfogainLoss MemoryData MultinomialLogisticLoss SigmoidCrossEntropyLoss Silence SoftmaxWithLoss "
    "WindowData".split()
)
_SAME_SHAPE = frozenset(
    "BN BatchNorm Dropout LRN Log MVN Normalize PReLU Power ReLU ReLU6 Scale Sigmoid Softmax TanH".split()  # noqa: SIM905
)
_TEST_PHASE = 1


class NetProblem(Exception):
    """The prototxt or caffemodel is wrong: a one-line message and a hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass
class CaffeNet:
    """A checked deploy net.

    Attributes:
        net: the normalized ``NetParameter`` (layers only, ``Input`` layers first, no blobs).
        blobs: each layer's blobs as float32 arrays, by layer name.
        inputs: ``(name, declared dims)`` per input, in order.
        outputs: ``(top, layer)`` per output: the blobs no later layer reads, with the last layer that wrote
            each, in the order of those layers (caffe2onnx's and OpenCV's order).
        text: the prototxt as written (OpenCV reads it, see ``opencv_prototxt`` in ``worker.py``).
        caffemodel: the weights file.
    """

    net: Any
    blobs: dict[str, list[np.ndarray]]
    inputs: list[tuple[str, list[int]]]
    outputs: list[tuple[str, str]]
    text: str
    caffemodel: Path
    shapes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)


def read_net(proto: Any, prototxt: Path, caffemodel: Path) -> CaffeNet:
    """Parse, normalize and check ``prototxt`` with the weights of ``caffemodel``.

    Args:
        proto: the ``proto`` module (the Caffe messages and blob arrays).
        prototxt: the deploy net (Caffe's text format).
        caffemodel: the trained weights (a binary ``NetParameter``).

    Raises:
        NetProblem: a file does not parse, names a layer caffe2onnx cannot convert, or the blobs do not fit.
    """
    from google.protobuf import text_format

    pb2 = proto.messages()
    try:
        text = prototxt.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NetProblem(f"cannot read {prototxt}: {exc}", "give a Caffe prototxt (text)") from exc
    net = pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        detail = str(exc).split(" : ", 1)[-1].rstrip(".")
        hint = 'fix the prototxt there (Caffe\'s text format: layer { name: "..." type: "..." ... })'
        if '"ceil_mode"' in detail:
            hint = "ceil_mode is OpenCV's spelling; Caffe's is round_mode: CEIL or round_mode: FLOOR"
        raise NetProblem(
            f"{prototxt.name} does not parse at line {exc.GetLine()}, column {exc.GetColumn()}: {detail}",
            hint,
        ) from exc
    if len(net.layers):
        raise NetProblem(
            f"{prototxt.name} uses Caffe's old V1 'layers' format",
            "upgrade it with Caffe's upgrade_net_proto_text tool",
        )
    normalized = _normalize(pb2, net)
    _check_types(normalized, text, prototxt.name)
    blobs = _read_blobs(proto, caffemodel)
    inputs = [(layer.top[0], _declared(layer)) for layer in normalized.layer if layer.type == "Input"]
    if not inputs:
        raise NetProblem(
            f"{prototxt.name} declares no input",
            'add an Input layer (layer { name: "data" type: "Input" top: "data" input_param { shape '
            "{ dim: 1 dim: 3 dim: 224 dim: 224 } } })",
        )
    found = CaffeNet(normalized, {}, inputs, _outputs(normalized, prototxt.name), text, caffemodel)
    found.shapes = check_blobs(normalized, blobs, caffemodel.name)
    found.blobs = {layer.name: blobs[layer.name] for layer in normalized.layer if layer.name in blobs}
    return found


def _normalize(pb2: Any, net: Any) -> Any:
    """The net as caffe2onnx wants it: ``Input`` layers first (legacy ``input:`` fields become ones), layers
    of the TRAIN phase only left out, blobs dropped (they come from the caffemodel)."""
    normalized = pb2.NetParameter()
    normalized.name = net.name
    shapes = [list(s.dim) for s in net.input_shape]
    if not shapes and len(net.input_dim):
        flat = list(net.input_dim)
        shapes = [flat[k : k + 4] for k in range(0, len(flat), 4)]
    for k, name in enumerate(net.input):
        layer = normalized.layer.add(name=name, type="Input", top=[name])
        layer.input_param.shape.add().dim.extend(shapes[min(k, len(shapes) - 1)] if shapes else [])
    kept = [layer for layer in net.layer if _in_test_phase(layer)]
    for layer in sorted(kept, key=lambda item: item.type != "Input"):
        copy = normalized.layer.add()
        copy.CopyFrom(layer)
        del copy.blobs[:]
    return normalized


def _in_test_phase(layer: Any) -> bool:
    if any(rule.HasField("phase") and rule.phase == _TEST_PHASE for rule in layer.exclude):
        return False
    phases = [rule.phase for rule in layer.include if rule.HasField("phase")]
    return not phases or _TEST_PHASE in phases


def _line_of(text: str, pattern: str) -> int | None:
    found = re.search(pattern, text)
    return text.count("\n", 0, found.start()) + 1 if found else None


def _check_types(net: Any, text: str, filename: str) -> None:
    for layer in net.layer:
        if layer.type == "Input" or layer.type in CONVERTIBLE:
            continue
        line = _line_of(text, rf'type\s*:\s*"{re.escape(layer.type)}"')
        where = f"{filename} line {line}" if line else filename
        if layer.type in TRAINING_ONLY:
            raise NetProblem(
                f"{where}: layer {layer.name!r} is a {layer.type} layer, which only training nets have",
                "give the deploy prototxt (an Input layer, no data, loss or accuracy layers)",
            )
        raise NetProblem(
            f"{where}: layer {layer.name!r} has type {layer.type!r}, which caffe2onnx cannot convert",
            f"known types: {', '.join(sorted(CONVERTIBLE | {'Input'}))}",
        )


def _read_blobs(proto: Any, caffemodel: Path) -> dict[str, list[np.ndarray]]:
    from google.protobuf import message

    try:
        data = caffemodel.read_bytes()
    except OSError as exc:
        raise NetProblem(f"cannot read {caffemodel}: {exc}", "check --weights") from exc
    model = proto.messages().NetParameter()
    try:
        model.ParseFromString(data)
    except message.DecodeError as exc:
        raise NetProblem(
            f"{caffemodel.name} is truncated or not a caffemodel ({len(data)} bytes): {exc}",
            "give the .caffemodel the net was trained into (a binary NetParameter), complete",
        ) from exc
    blobs: dict[str, list[np.ndarray]] = {}
    for layer in [*model.layer, *model.layers]:
        if not len(layer.blobs):
            continue
        try:
            blobs[layer.name] = [proto.blob_array(blob) for blob in layer.blobs]
        except ValueError as exc:
            raise NetProblem(
                f"{caffemodel.name}: a blob of layer {layer.name!r} {exc}: the file is truncated or damaged",
                "give the complete .caffemodel",
            ) from exc
    return blobs


def _declared(layer: Any) -> list[int]:
    shapes = layer.input_param.shape
    return [int(d) for d in shapes[0].dim] if len(shapes) else []


def _outputs(net: Any, filename: str) -> list[tuple[str, str]]:
    """The blobs no layer reads after its last write, ordered by that last writer."""
    writer: dict[str, tuple[int, str]] = {}
    pending: dict[str, tuple[int, str]] = {}
    for index, layer in enumerate(net.layer):
        for bottom in layer.bottom:
            if bottom not in writer:
                raise NetProblem(
                    f"{filename}: layer {layer.name!r} reads blob {bottom!r}, which no earlier layer writes",
                    "check its bottom names (tops of earlier layers or an Input layer)",
                )
            pending.pop(bottom, None)
        for top in layer.top:
            writer[top] = pending[top] = (index, layer.name)
    ordered = sorted(pending.items(), key=lambda item: item[1][0])
    return [(top, layer) for top, (_, layer) in ordered]


# ------------------------------------------------------------------------------------------------- shapes
def _pair(values: Sequence[int], single_h: int, single_w: int, default: int) -> tuple[int, int]:
    if single_h or single_w:
        return single_h, single_w
    if not len(values):
        return default, default
    return int(values[0]), int(values[-1])


def _conv_out(size: int, kernel: int, pad: int, stride: int, dilation: int) -> int:
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def _pool_out(size: int, kernel: int, pad: int, stride: int, ceil: bool) -> int:
    """Caffe's pooled size: ceil rounding unless ``round_mode: FLOOR``, the last window starting in the
    input (``pooling_layer.cpp``)."""
    rounding = math.ceil if ceil else math.floor
    out = int(rounding((size + 2 * pad - kernel) / stride)) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _expected(layer: Any, shape: tuple[int, ...]) -> list[tuple[int, ...]] | None:
    """The blob shapes a parameter layer needs on an input of ``shape``; ``None`` for other layers."""
    kind = layer.type
    if kind in ("Convolution", "ConvolutionDepthwise", "Deconvolution"):
        p = layer.convolution_param
        kh, kw = _pair(p.kernel_size, p.kernel_h, p.kernel_w, 1)
        group = shape[1] if kind == "ConvolutionDepthwise" else max(int(p.group), 1)
        if kind == "Deconvolution":
            weight = (shape[1], p.num_output // group, kh, kw)
        else:
            weight = (p.num_output, shape[1] // group, kh, kw)
        return [weight, (p.num_output,)] if p.bias_term else [weight]
    if kind == "InnerProduct":
        p = layer.inner_product_param
        width = int(np.prod(shape[p.axis :]))
        weight = (width, p.num_output) if p.transpose else (p.num_output, width)
        return [weight, (p.num_output,)] if p.bias_term else [weight]
    if kind in ("BatchNorm", "BN"):
        return [(shape[1],), (shape[1],), (1,)]
    if kind == "Scale" and len(layer.bottom) == 1:
        return [(shape[1],), (shape[1],)] if layer.scale_param.bias_term else [(shape[1],)]
    if kind == "PReLU":
        return [(1,) if layer.prelu_param.channel_shared else (shape[1],)]
    return None


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    """A shape without its 1s (old caffemodels store ``(C,)`` as ``(1, 1, 1, C)``)."""
    return tuple(int(d) for d in shape if d != 1)


def _out_shape(layer: Any, ins: list[tuple[int, ...] | None]) -> tuple[int, ...] | None:
    first = ins[0] if ins else None
    if first is None or len(first) < 2:
        return None
    kind = layer.type
    n, c = first[0], first[1]
    if kind in _SAME_SHAPE or kind == "Eltwise":
        return first
    if kind in ("Convolution", "ConvolutionDepthwise") and len(first) == 4:
        p = layer.convolution_param
        kh, kw = _pair(p.kernel_size, p.kernel_h, p.kernel_w, 1)
        ph, pw = _pair(p.pad, p.pad_h, p.pad_w, 0)
        sh, sw = _pair(p.stride, p.stride_h, p.stride_w, 1)
        dh, dw = _pair(p.dilation, 0, 0, 1)
        return (n, p.num_output, _conv_out(first[2], kh, ph, sh, dh), _conv_out(first[3], kw, pw, sw, dw))
    if kind == "Pooling" and len(first) == 4:
        p = layer.pooling_param
        if p.global_pooling:
            return (n, c, 1, 1)
        kh, kw = (p.kernel_size, p.kernel_size) if p.kernel_size else (p.kernel_h, p.kernel_w)
        ph, pw = (p.pad, p.pad) if p.pad else (p.pad_h, p.pad_w)
        sh, sw = (p.stride, p.stride) if p.stride != 1 or not p.stride_h else (p.stride_h, p.stride_w)
        ceil = p.round_mode == 0
        return (n, c, _pool_out(first[2], kh, ph, sh, ceil), _pool_out(first[3], kw, pw, sw, ceil))
    if kind == "InnerProduct":
        return (*first[: layer.inner_product_param.axis], layer.inner_product_param.num_output)
    if kind == "Flatten" and layer.flatten_param.axis == 1 and layer.flatten_param.end_axis == -1:
        return (n, int(np.prod(first[1:])))
    if kind == "Concat" and all(s is not None and len(s) == len(first) for s in ins):
        axis = layer.concat_param.axis % len(first)
        return (*first[:axis], sum(s[axis] for s in ins if s is not None), *first[axis + 1 :])
    return None


def check_blobs(
    net: Any, blobs: dict[str, list[np.ndarray]], filename: str
) -> dict[str, tuple[int, ...] | None]:
    """Check every parameter layer's blobs against the shapes the net makes from its declared inputs;
    returns the blob shapes found on the way (``None`` where a layer's shape is not worked out here).

    Raises:
        NetProblem: a layer's blobs are missing, too few, too many or misshapen.
    """
    shapes: dict[str, tuple[int, ...] | None] = {}
    for layer in net.layer:
        if layer.type == "Input":
            shapes[layer.top[0]] = tuple(_declared(layer)) or None
            continue
        ins = [shapes.get(bottom) for bottom in layer.bottom]
        first = ins[0] if ins else None
        expected = _expected(layer, first) if first is not None and len(first) >= 2 else None
        if layer.type in (
            "Convolution",
            "ConvolutionDepthwise",
            "Deconvolution",
            "InnerProduct",
            "BatchNorm",
            "BN",
            "PReLU",
        ) or (layer.type == "Scale" and len(layer.bottom) == 1):
            found = blobs.get(layer.name)
            if not found:
                raise NetProblem(
                    f"{filename} has no weights for layer {layer.name!r} ({layer.type}): it was not trained "
                    "with this prototxt",
                    "give the caffemodel that belongs to the prototxt (--weights), or fix the layer's name",
                )
            if expected is not None:
                _compare(layer, found, expected, filename)
        out = _out_shape(layer, ins)
        if out is not None and min(out, default=1) <= 0:
            raise NetProblem(
                f"layer {layer.name!r} ({layer.type}) would output {list(out)} from {list(first or ())}: the "
                "input is too small for the net",
                "give inputs of the size the prototxt's Input layers declare",
            )
        for top in layer.top:
            shapes[top] = out
    return shapes


def check_shapes(net: CaffeNet, shapes: dict[str, tuple[int, ...]]) -> None:
    """Check that ``net`` runs on inputs of ``shapes`` (by input name): every blob still fits.

    NOTE: why: Caffe reshapes a net to any input size, but an InnerProduct's weights fix the size it flattens;
    this names the layer instead of OpenCV's assertion on matrix sizes.

    Raises:
        NetProblem: a layer's blobs do not fit the shapes, or a layer's output would be empty.
    """
    for name, dims in net.inputs:
        if name in shapes and dims and len(shapes[name]) != len(dims):
            raise NetProblem(
                f"input {name!r} has {len(dims)} dims in the prototxt ({dims}), not {len(shapes[name])}",
                f"give it as {name}:batch,{','.join(str(d) for d in dims[1:])}",
            )
    sized = type(net.net)()
    sized.CopyFrom(net.net)
    for layer in sized.layer:
        if layer.type == "Input" and layer.top[0] in shapes:
            del layer.input_param.shape[:]
            layer.input_param.shape.add().dim.extend(shapes[layer.top[0]])
    described = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
    try:
        check_blobs(sized, net.blobs, f"with inputs {described}")
    except NetProblem as problem:
        raise NetProblem(
            problem.message,
            "give inputs of the size the prototxt's Input layers declare "
            "(convkit describes them when --input is left out)",
        ) from problem


def _compare(layer: Any, found: list[np.ndarray], expected: list[tuple[int, ...]], filename: str) -> None:
    if len(found) != len(expected):
        raise NetProblem(
            f"{filename}: layer {layer.name!r} ({layer.type}) has {len(found)} blobs, the prototxt makes "
            f"{len(expected)}",
            "check bias_term in the prototxt, or give the caffemodel that belongs to it",
        )
    for index, (blob, want) in enumerate(zip(found, expected, strict=True)):
        if blob.shape != want and _squeezed(blob.shape) != _squeezed(want):
            raise NetProblem(
                f"{filename}: blob {index} of layer {layer.name!r} ({layer.type}) is {list(blob.shape)}, the "
                f"prototxt makes it {list(want)}",
                "give the caffemodel that belongs to the prototxt (--weights), or fix the layer's "
                "num_output, kernel or input shape",
            )
