"""The Caffe worker: runs one request in the Caffe environment (``convkit env create caffe``).

Run as ``<env>/bin/python protocol.py worker.py REQUEST.json`` by ``convkit.frontends.caffe``
(``protocol.py`` starts the process and serves ``HANDLERS``); it imports caffe2onnx, OpenCV, numpy,
protobuf and onnx, never convkit, and loads ``proto.py``, ``net.py``, ``export.py`` (caffe2onnx's
conversion and the fixes to its output) and ``reference.py`` from its own folder by path. This file holds
the request handlers, the loading of a model source and the OpenCV run.

Caffe itself has no installable package. A Caffe model is its deploy prototxt and its caffemodel: caffe2onnx
converts them to ONNX, and OpenCV's Caffe importer (``cv2.dnn.readNetFromCaffe``), which implements Caffe's
layers on its own, runs them for the reference outputs. The two share no code, so their agreement means
something.

A model source in a request is one of:

- ``{"kind": "files", "prototxt": "/abs/net.prototxt", "caffemodel": "/abs/net.caffemodel"}``;
- ``{"kind": "factory", "source": "/abs/file.py:factory" | "pkg.module:factory", "weights": PATH | null,
  "unsafe_pickle": bool, "snapshot": PATH}``: the factory returns ``(prototxt text, {layer name: [blobs]})``,
  or the prototxt text alone with ``weights`` a caffemodel; the first request writes both files beside
  ``snapshot``, later ones read them (one handle, one model).

Requests: ``describe``, ``run``, ``export``, ``reference_cnn`` (see each handler). Nothing trains: Caffe's
solver is not installable.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# NOTE: why this name: protocol.py starts every worker process and registers itself under it (see its main)
import convkit_worker_protocol as protocol

caffe_proto = protocol.load_sibling("proto")
caffe_net = protocol.load_sibling("net")
caffe_export = protocol.load_sibling("export")
WorkerFailure = protocol.WorkerFailure
load_arrays = protocol.load_arrays
save_outputs = protocol.save_outputs


# ============================================================================================== models
def _net(prototxt: Path, caffemodel: Path) -> Any:
    try:
        return caffe_net.read_net(caffe_proto, prototxt, caffemodel)
    except caffe_net.NetProblem as problem:
        raise WorkerFailure(problem.message, problem.hint, "load") from problem


def _factory_files(source: Mapping[str, Any]) -> tuple[Path, Path]:
    """The prototxt and caffemodel of a factory's net, written beside the handle's snapshot by its first
    request and read back by later ones."""
    folder = Path(source["snapshot"]).parent
    prototxt, caffemodel = folder / "factory.prototxt", folder / "factory.caffemodel"
    if prototxt.is_file() and caffemodel.is_file():
        return prototxt, caffemodel
    folder.mkdir(parents=True, exist_ok=True)
    made = protocol.call_factory(source["source"])
    text, blobs = (made, None) if isinstance(made, str) else (made if _is_pair(made) else (None, None))
    if text is None:
        raise WorkerFailure(
            f"{source['source']} made a {type(made).__name__}, not a Caffe net",
            "return (deploy prototxt text, {layer name: [weight, bias, ...]}), or the prototxt text with "
            "--weights model.caffemodel",
            "load",
        )
    if source.get("weights"):
        weights = Path(source["weights"])
        if weights.suffix != ".caffemodel":
            raise WorkerFailure(
                f"--weights {weights.name}: a Caffe net takes its weights from a .caffemodel",
                "give the .caffemodel trained with this prototxt",
                "input",
            )
        data = weights.read_bytes()
    elif blobs is None:
        raise WorkerFailure(
            f"{source['source']} returned a prototxt without weights",
            "return (prototxt, {layer name: [blobs]}) or give --weights model.caffemodel",
            "input",
        )
    else:
        data = _caffemodel_from(text, blobs, source["source"])
    _write(caffemodel, data)
    _write(prototxt, text.encode("utf-8"))
    return prototxt, caffemodel


def _is_pair(made: Any) -> bool:
    return (
        isinstance(made, tuple)
        and len(made) == 2
        and isinstance(made[0], str)
        and isinstance(made[1], Mapping)
    )


def _caffemodel_from(text: str, blobs: Mapping[str, Sequence[Any]], where: str) -> bytes:
    import numpy as np
    from google.protobuf import text_format

    net = caffe_proto.messages().NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        raise WorkerFailure(
            f"the prototxt {where} returned does not parse: {exc}", "fix the factory's prototxt", "load"
        ) from exc
    return bytes(caffe_proto.caffemodel_bytes(net, {k: [np.asarray(b) for b in v] for k, v in blobs.items()}))


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _check_shapes(net: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    try:
        caffe_net.check_shapes(net, shapes)
    except caffe_net.NetProblem as problem:
        raise WorkerFailure(problem.message, problem.hint, "data") from problem


def _load(source: Mapping[str, Any]) -> Any:
    if source["kind"] == "factory":
        return _net(*_factory_files(source))
    if source["kind"] == "files":
        return _net(Path(source["prototxt"]), Path(source["caffemodel"]))
    raise WorkerFailure(f"unknown source kind {source['kind']!r}", kind="internal")


# ============================================================================================= OpenCV
def opencv_prototxt(text: str) -> str:
    """The prototxt in OpenCV's dialect: ``round_mode: FLOOR`` / ``CEIL`` become ``ceil_mode: false`` /
    ``true``.

    NOTE: why: OpenCV's caffe.proto is a fork that spells Caffe's ``round_mode`` as ``ceil_mode`` (a bool);
    its text parser drops the rest of a ``pooling_param`` that holds a field it does not know, and pools with
    kernel 0. Only that field changes; every other line is the user's, parsed by OpenCV's own parser.
    """
    text = re.sub(r"\bround_mode\s*:\s*FLOOR\b", "ceil_mode: false", text)
    return re.sub(r"\bround_mode\s*:\s*CEIL\b", "ceil_mode: true", text)


def _run(net: Any, inputs: Mapping[str, Any], what: str) -> list[Any]:
    """Run the net with OpenCV's Caffe importer on ``inputs``; outputs in ``net.outputs`` order."""
    import cv2
    import numpy as np

    order = protocol.ordered_names([name for name, _ in net.inputs], list(inputs), what)
    arrays = {}
    for name in order:
        value = np.asarray(inputs[name])
        if value.dtype.kind != "f":
            raise WorkerFailure(
                f"input {name!r} is {value.dtype}; Caffe computes in float32", "give float32 data", "data"
            )
        arrays[name] = np.ascontiguousarray(value, np.float32)
    _check_shapes(net, {name: tuple(array.shape) for name, array in arrays.items()})
    with tempfile.TemporaryDirectory(prefix="convkit-caffe-opencv-") as folder:
        prototxt = Path(folder) / "deploy.prototxt"
        prototxt.write_text(opencv_prototxt(net.text), encoding="utf-8")
        try:
            runner = cv2.dnn.readNetFromCaffe(str(prototxt), str(net.caffemodel))
            runner.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            for name in order:
                runner.setInput(arrays[name], name)
            found = runner.forward([layer for _, layer in net.outputs])
        except cv2.error as exc:
            detail = " ".join(str(exc).split())
            raise WorkerFailure(
                f"OpenCV could not run the Caffe net: {detail[:300]}",
                "check the input shapes against the prototxt's Input layers",
                "data",
            ) from exc
    return [np.asarray(value) for value in found]


# ============================================================================================ convert
def _convert_shapes(net: Any, specs: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Each input's shape to convert at: ``specs``' fixed dims, the prototxt's elsewhere, a batch of one."""
    declared = dict(net.inputs)
    shapes = {}
    for spec in specs:
        dims = declared[spec["name"]]
        if dims and len(spec["dims"]) != len(dims):
            _check_shapes(net, {spec["name"]: tuple(1 for _ in spec["dims"])})
        shapes[spec["name"]] = [
            want if isinstance(want, int) else (1 if axis == 0 else dims[axis])
            for axis, want in enumerate(spec["dims"])
        ]
    return shapes


# ============================================================================================ handlers
def describe(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source`` -> ``{"input_names": [...], "input_specs": [{"name", "dims", "dtype"}]}``: the Input layers,
    their batch dim unknown (Caffe reshapes a net to any batch)."""
    net = _load(request["source"])
    specs = [
        {"name": name, "dims": [None if axis == 0 else d for axis, d in enumerate(dims)], "dtype": "float32"}
        for name, dims in net.inputs
    ]
    return {"input_names": [name for name, _ in net.inputs], "input_specs": specs}


def run(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``source``, ``inputs`` (.npz) -> ``outputs`` (.npz, ``output_0`` ...): the net run by OpenCV."""
    net = _load(request["source"])
    outputs = _run(net, load_arrays(request["inputs"]), "in the data")
    save_outputs(request["outputs"], outputs)
    return {"outputs": len(outputs)}


def export(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """Export ``source`` to ONNX with caffe2onnx.

    Request: ``source``, ``specs`` (``[{"name", "dims", "dtype"}]``, string dims symbolic), ``opset`` (or
    null: 13), ``onnx`` (where to write), ``example`` (.npz), ``reference`` (.npz: OpenCV's outputs on the
    example, written here).

    Result: ``input_names``, ``param_names`` (initializer -> ``layer.weight`` ...), ``outputs`` (how many),
    ``exporter_version``.
    """
    import onnx

    net = _load(request["source"])
    specs = {spec["name"]: spec for spec in request["specs"]}
    order = protocol.ordered_names([name for name, _ in net.inputs], list(specs), "in --input")
    opset = int(request.get("opset") or caffe_export.DEFAULT_OPSET)
    newest = onnx.defs.onnx_opset_version()
    if not caffe_export.DEFAULT_OPSET <= opset <= newest:
        raise WorkerFailure(
            f"caffe2onnx's models need opset {caffe_export.DEFAULT_OPSET} to {newest}, not {opset}",
            f"use --opset {caffe_export.DEFAULT_OPSET} (the default) or higher",
            "export",
        )
    ordered = [specs[name] for name in order]
    shapes = _convert_shapes(net, ordered)
    _check_shapes(net, {name: tuple(dims) for name, dims in shapes.items()})
    model = caffe_export.convert(net, shapes)
    try:
        param_names = caffe_export.tidy(model, net, ordered, opset)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, RuntimeError) as exc:
        raise WorkerFailure(
            f"caffe2onnx wrote an invalid model: {protocol.first_line(exc)}",
            "--verbose shows caffe2onnx's log; try another --opset",
            "export",
        ) from exc
    Path(request["onnx"]).write_bytes(model.SerializeToString())
    example = load_arrays(request["example"])
    outputs = _run(net, {name: example[name] for name in order}, "in the example")
    save_outputs(request["reference"], outputs)
    return {
        "input_names": order,
        "param_names": param_names,
        "outputs": len(outputs),
        "exporter_version": importlib.metadata.version("caffe2onnx"),
    }


def reference_cnn(request: dict[str, Any], channel: Any) -> dict[str, Any]:
    """``weights`` (canonical .npz), ``folder`` -> the reference CNN written there as
    ``reference_cnn.prototxt`` and ``reference_cnn.caffemodel``; answers the ``files`` source that loads
    it."""
    from google.protobuf import text_format

    reference = protocol.load_sibling("reference")
    try:
        blobs = reference.reference_blobs(load_arrays(request["weights"]))
    except ValueError as exc:
        raise WorkerFailure(str(exc), kind="data") from exc
    folder = Path(request["folder"])
    prototxt, caffemodel = folder / "reference_cnn.prototxt", folder / "reference_cnn.caffemodel"
    net = text_format.Parse(reference.PROTOTXT, caffe_proto.messages().NetParameter())
    _write(prototxt, reference.PROTOTXT.encode("utf-8"))
    _write(caffemodel, caffe_proto.caffemodel_bytes(net, blobs))
    return {"source": {"kind": "files", "prototxt": str(prototxt), "caffemodel": str(caffemodel)}}


HANDLERS = {"describe": describe, "run": run, "export": export, "reference_cnn": reference_cnn}
