"""Keras 3 on its JAX or PyTorch backend (``--framework keras-jax`` / ``keras-torch``): ``.keras`` files
and ``file.py:factory`` sources, exported with Keras's own ``model.export(path, format="onnx")`` (jax2onnx
on JAX, the TorchScript-based ``torch.onnx`` exporter on PyTorch) and run by Keras for the reference outputs.

NOTE: why a worker: Keras picks its backend once per process, when it is first imported, and the core
process uses Keras on TensorFlow (the ``tensorflow`` front end). Each job is one request to
``convkit/frontends/keras_backend/env/worker.py`` run by the core's own interpreter with ``KERAS_BACKEND``
set in its
environment; the core keeps a ``KerasBackendModel`` handle and never imports keras for these front ends.

After the export, in the core: jax2onnx writes Keras's ``MaxPooling2D`` as a 6-D ``MaxPool``
(``reduce_window`` unsqueezed to two leading unit dims, kernel ``[1, kh, kw, 1]``) that onnxruntime rejects
("Unsupported pooling size"); ``fix_high_rank_maxpool`` rewrites each into Transpose -> Reshape -> 4-D
MaxPool -> Reshape -> Transpose over the dims the window moves on. Then inputs/outputs are named like every
convkit export and the model is checked with the ONNX checker.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convkit.core.inputs import InputSpec
from convkit.errors import ExportError, InputFileError, ModelLoadError
from convkit.frontends._worker.frontend import (
    WorkerFrontend,
    WorkerModel,
    digest,
    remember,
    remove,
)
from convkit.frontends.base import ExportOptions, ExportResult, LoadOptions

if TYPE_CHECKING:
    import onnx

WORKER_SCRIPT = Path(__file__).resolve().parent / "env" / "worker.py"
KERAS_SUFFIXES = (".keras",)
BACKENDS = {"jax": ("jax", "jax2onnx"), "torch": ("torch",)}
# seconds per request kind (CONVKIT_WORKER_TIMEOUT overrides them all)
_TIMEOUTS = {"describe": 300.0, "run": 300.0, "export": 600.0}
_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
# onnxruntime's MaxPool takes 1 to 3 spatial dims
_MAX_POOL_DIMS = 3


class KerasBackendModel(WorkerModel):
    """A handle on a Keras model that lives in the worker (``spec["kind"]``: ``factory`` or ``file``)."""


class KerasBackendFrontend(WorkerFrontend):
    """Keras 3 on one non-TensorFlow backend, driven as a worker process (see the module docstring)."""

    backend = "jax"
    name = "keras-jax"

    # ----------------------------------------------------------------------------------------------- setup
    def is_available(self) -> str | None:
        """``None`` when keras, the backend and its ONNX exporter are installed here (not imported)."""
        if not WORKER_SCRIPT.is_file():
            return f"the worker script {WORKER_SCRIPT} is missing"
        for module in ("keras", *BACKENDS[self.backend]):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed"
        return None

    def versions(self) -> dict[str, str]:
        """Versions of keras, the backend and its exporter, read from package metadata."""
        from importlib.metadata import PackageNotFoundError, version

        found = {}
        for package in ("keras", *BACKENDS[self.backend]):
            try:
                found[package] = version(package)
            except PackageNotFoundError:
                continue
        return found

    def claims_path(self, path: Path) -> bool:
        """Nothing: a ``.keras`` file is the ``tensorflow`` front end's unless ``--framework`` says so."""
        return False

    # ------------------------------------------------------------------------------------------------ worker
    def _call(self, request: dict[str, Any], workdir: Path, verbose: bool) -> dict[str, Any]:
        from convkit.frontends._worker import Worker, call_worker, default_timeout

        env = {"KERAS_BACKEND": self.backend}
        worker = Worker(self.name, Path(sys.executable), WORKER_SCRIPT, env, dict(_QUIET_ENV))
        seconds = default_timeout(_TIMEOUTS[request["kind"]])
        return call_worker(worker, request, workdir, seconds, verbose)

    # ------------------------------------------------------------------------------------------------ load
    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> KerasBackendModel:
        """A handle on ``source`` (a ``.keras`` file or ``file.py:factory``), checked here without starting
        Keras; Keras loads it in the worker at each request.

        Raises:
            InputFileError: the file is missing or not a ``.keras`` file.
        """
        from convkit.core.sources import is_factory_source

        weights = str(Path(options.weights).absolute()) if options.weights else None
        if weights is not None and not Path(weights).is_file():
            raise InputFileError(f"weights file {options.weights} does not exist", "check --weights")
        if is_factory_source(source):
            module, _, attr = source.rpartition(":")
            if module.endswith(".py"):
                if not Path(module).is_file():
                    raise InputFileError(
                        f"source file {module} does not exist", "check the path before the ':'"
                    )
                module = str(Path(module).absolute())
            folder = Path(tempfile.mkdtemp(prefix="convkit-keras-model-"))
            spec: dict[str, Any] = {
                "kind": "factory",
                "source": f"{module}:{attr}",
                "weights": weights,
                "snapshot": str(folder / "snapshot.weights.h5"),
            }
            handle = KerasBackendModel(source, options, spec)
            weakref.finalize(handle, remove, folder)
            return handle
        path = Path(source)
        if not path.is_file() or path.suffix.lower() not in KERAS_SUFFIXES:
            raise InputFileError(
                f"{source} is not a .keras file" if path.exists() else f"model {source} does not exist",
                "give a .keras file saved by Keras 3, or path/to/file.py:factory",
            )
        spec = {
            "kind": "file",
            "path": str(path.absolute()),
            "unsafe_pickle": options.unsafe_pickle,
            "weights": weights,
        }
        return KerasBackendModel(source, options, spec)

    # --------------------------------------------------------------------------------------------- export
    def export(
        self,
        model: KerasBackendModel,
        specs: Sequence[InputSpec],
        example: Mapping[str, np.ndarray],
        path: Path,
        options: ExportOptions,
    ) -> ExportResult:
        """Export with ``model.export(format="onnx")`` in the worker, then, here: 6-D MaxPools rewritten
        to ones onnxruntime runs, outputs named ``output`` / ``output_N``, input dims named after ``specs``,
        the model checked with the ONNX checker.

        Raises:
            ExportError: Keras's exporter failed, or the model fixed a dimension meant to be dynamic.
        """
        import onnx

        from convkit.graph.conform import conform_file

        exporter = "jax2onnx" if self.backend == "jax" else "torch.onnx"
        if options.exporter not in (None, exporter, "keras"):
            raise ExportError(
                f"unknown exporter {options.exporter!r} for {self.name}", f"use {exporter} or omit it"
            )
        verbose = options.verbose or model.options.verbose
        with tempfile.TemporaryDirectory(prefix="convkit-keras-") as folder:
            workdir = Path(folder)
            result, reference = self._export_in_worker(model, specs, example, options.opset, workdir, verbose)
            name = str(result.get("exporter") or exporter)
            try:
                raw = onnx.load(str(workdir / "exported.onnx"))
            except Exception as exc:
                raise ModelLoadError(f"{name} wrote no readable ONNX model: {exc}") from exc
            fixed = fix_high_rank_maxpool(raw)
            _rename_inputs(raw, result.get("input_names") or [], specs)
            onnx.save(raw, str(workdir / "fixed.onnx"))
            opset, notes = conform_file(
                workdir / "fixed.onnx",
                Path(path),
                specs,
                exporter=name,
                requested_opset=options.opset,
                exporter_version=result.get("exporter_version"),
            )
        try:
            onnx.checker.check_model(str(path))
        except Exception as exc:
            raise ExportError(f"{name} wrote an invalid ONNX model: {exc}".splitlines()[0]) from exc
        if fixed:
            notes.append(f"rewrote {fixed} {'MaxPool' if fixed == 1 else 'MaxPools'} of rank > 5 to 4-D ones")
        remember(model, digest(example), reference)
        return ExportResult(name, opset, notes)


class KerasJaxFrontend(KerasBackendFrontend):
    """Keras 3 on JAX: exported with jax2onnx (``--framework keras-jax``)."""

    backend = "jax"
    name = "keras-jax"


class KerasTorchFrontend(KerasBackendFrontend):
    """Keras 3 on PyTorch: exported with TorchScript-based ``torch.onnx`` (``--framework keras-torch``)."""

    backend = "torch"
    name = "keras-torch"


def _rename_inputs(model: onnx.ModelProto, exported: Sequence[str], specs: Sequence[InputSpec]) -> None:
    """Name the graph inputs after ``specs`` (the exporters use them already; this covers any that don't)."""
    from convkit.graph.names import rename_values

    graph_inputs = [value.name for value in model.graph.input]
    wanted = {spec.name for spec in specs}
    if set(graph_inputs) == wanted:
        return
    order = list(exported) or [spec.name for spec in specs]
    if len(order) == len(graph_inputs):
        rename_values(model.graph, dict(zip(graph_inputs, order, strict=True)))


def fix_high_rank_maxpool(model: onnx.ModelProto) -> int:
    """Rewrite each ``MaxPool`` with more than 3 spatial dims (jax2onnx's ``reduce_window`` max) whose
    window moves on at most 3 of them; returns how many were rewritten.

    The input goes through Transpose (the axes the window does not move on first, those it moves on last)
    and Reshape to ``[-1, 1, *moving dims]``, a MaxPool on the moving dims only, then Reshape back and the
    inverse Transpose. NOTE: why this is exact: on an axis with kernel 1, stride 1, dilation 1 and no
    padding, max pooling is the identity, so such axes are batch-like and may be merged into N.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    taken = {name for node in graph.node for name in [*node.input, *node.output]}
    taken |= {value.name for value in [*graph.input, *graph.output, *graph.initializer]}

    def fresh(stem: str) -> str:
        k = 0
        while f"{stem}_{k}" in taken:
            k += 1
        taken.add(f"{stem}_{k}")
        return f"{stem}_{k}"

    def constant(stem: str, values: list[int]) -> str:
        name = fresh(stem)
        graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
        return name

    new_nodes = []
    fixed = 0
    for node in graph.node:
        plan = _maxpool_plan(node)
        if plan is None:
            new_nodes.append(node)
            continue
        rank, moving, attributes = plan
        perm = [axis for axis in range(rank) if axis not in moving] + moving
        inverse = [perm.index(axis) for axis in range(rank)]
        kept = rank - len(moving)
        stem = node.name or "maxpool"
        moved, shape, head, tail, target, flat = (
            fresh(f"{stem}_{s}") for s in ("moved", "shape", "head", "tail", "target", "flat")
        )
        pooled, pooled_shape, pooled_tail, back_shape, back = (
            fresh(f"{stem}_{s}") for s in ("pooled", "pooled_shape", "pooled_tail", "back_shape", "back")
        )
        zero, split, end, two, lead = (
            constant(f"{stem}_{s}", v)
            for s, v in (("zero", [0]), ("split", [kept]), ("end", [rank]), ("two", [2]), ("lead", [-1, 1]))
        )
        new_nodes += [
            helper.make_node("Transpose", [node.input[0]], [moved], perm=perm),
            helper.make_node("Shape", [moved], [shape]),
            helper.make_node("Slice", [shape, zero, split], [head]),
            helper.make_node("Slice", [shape, split, end], [tail]),
            helper.make_node("Concat", [lead, tail], [target], axis=0),
            helper.make_node("Reshape", [moved, target], [flat]),
            helper.make_node("MaxPool", [flat], [pooled], name=node.name, **attributes),
            helper.make_node("Shape", [pooled], [pooled_shape]),
            helper.make_node("Slice", [pooled_shape, two, end], [pooled_tail]),
            helper.make_node("Concat", [head, pooled_tail], [back_shape], axis=0),
            helper.make_node("Reshape", [pooled, back_shape], [back]),
            helper.make_node("Transpose", [back], [node.output[0]], perm=inverse),
        ]
        fixed += 1
    if fixed:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return fixed


def _maxpool_plan(node: onnx.NodeProto) -> tuple[int, list[int], dict[str, Any]] | None:
    """For a MaxPool onnxruntime cannot run (over 3 spatial dims) but a rewrite can: its input rank, the
    input axes the window moves on, and the 4-D (or 3-D, 5-D) MaxPool's attributes; else ``None``."""
    from onnx import helper

    if node.op_type != "MaxPool" or node.domain not in ("", "ai.onnx"):
        return None
    if len(node.output) > 1 and node.output[1]:
        return None  # the Indices output would need remapping
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kernel = list(attributes.get("kernel_shape") or [])
    k = len(kernel)
    if k <= _MAX_POOL_DIMS:
        return None
    strides = list(attributes.get("strides") or [1] * k)
    dilations = list(attributes.get("dilations") or [1] * k)
    pads = list(attributes.get("pads") or [0] * (2 * k))
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    spatial = [
        i for i in range(k) if (kernel[i], strides[i], dilations[i], pads[i], pads[k + i]) != (1, 1, 1, 0, 0)
    ]
    if not spatial or len(spatial) > _MAX_POOL_DIMS:
        return None
    new = {
        "kernel_shape": [kernel[i] for i in spatial],
        "strides": [strides[i] for i in spatial],
        "dilations": [dilations[i] for i in spatial],
        "pads": [pads[i] for i in spatial] + [pads[k + i] for i in spatial],
    }
    if auto_pad != "NOTSET":
        new["auto_pad"] = auto_pad
        del new["pads"]
    if attributes.get("ceil_mode"):
        new["ceil_mode"] = attributes["ceil_mode"]
    if "storage_order" in attributes:
        new["storage_order"] = attributes["storage_order"]
    return k + 2, [2 + i for i in spatial], new
