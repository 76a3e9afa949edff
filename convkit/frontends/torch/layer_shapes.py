"""Whether an activation fits an ONNX value's shape and dtype, as the file declares it or as onnxruntime
measures it; used by ``layers`` to check every pairing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from convkit.frontends.torch.layer_scopes import Graph

# values exposed per onnxruntime run when a declared shape is missing (bounds memory)
_VALUES_PER_RUN = 64


class ShapeCheck:
    """Whether an activation has a value's shape and dtype: as the file declares it, else as onnxruntime
    measures it on the same inputs.

    NOTE: why declared shapes first: they are what the exporter meant, and stay right when a planted fault
    (a flipped Transpose) changes what the file computes. Why measured ones second: TorchScript files
    declare no intermediate shapes, and torch.export can record a symbolic dim as the example's size (an
    LSTM's sequence length). Only values whose declared shape did not fit are measured, in one batched run
    after a first pass (:meth:`measure`); only their shapes and dtypes are read, never their values.
    """

    def __init__(self, graph: Graph, onnx_model: Any, inputs: Mapping[str, np.ndarray]) -> None:
        self.graph = graph
        self.onnx_model = onnx_model
        self.inputs = inputs
        self.bindings = _symbol_bindings(onnx_model.graph, inputs)
        self.measured: dict[str, tuple[tuple[int, ...], np.dtype[Any]] | None] = {}
        self.misses: list[str] = []

    def fits(self, name: str, array: np.ndarray) -> bool:
        """Whether ``array`` fits value ``name`` (a miss is remembered for :meth:`measure`)."""
        if _fits_declared(self.graph.shapes.get(name), array, self.bindings):
            return True
        if name in self.measured:
            measured = self.measured[name]
            return measured is not None and measured == (array.shape, array.dtype)
        if name not in self.misses:
            self.misses.append(name)
        return False

    def measure(self) -> bool:
        """Measure the missed values' shapes in onnxruntime; whether there was anything to measure.

        A value onnxruntime cannot expose stays unmeasured and fits nothing.
        """
        from convkit.diagnose.localize import onnxruntime_evaluator

        todo = [name for name in self.misses if name not in self.measured]
        if not todo:
            return False
        evaluate = onnxruntime_evaluator(self.onnx_model)
        feeds = {name: np.asarray(value) for name, value in self.inputs.items()}
        for start in range(0, len(todo), _VALUES_PER_RUN):
            chunk = todo[start : start + _VALUES_PER_RUN]
            try:
                computed = evaluate(chunk, feeds)
            except Exception:  # NOTE: why broad: a value that cannot be exposed only loses its pairing
                self.measured.update(dict.fromkeys(chunk))
                continue
            for name, value in zip(chunk, computed, strict=True):
                array = np.asarray(value)
                self.measured[name] = (array.shape, array.dtype)
        return True


def _symbol_bindings(graph: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Symbolic input dims bound to the sizes fed (``batch`` -> 2)."""
    bound: dict[str, int] = {}
    for value in graph.input:
        if value.name not in inputs:
            continue
        shape = np.shape(inputs[value.name])
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param and axis < len(shape):
                bound.setdefault(dim.dim_param, int(shape[axis]))
    return bound


def _fits_declared(
    declared: tuple[list[int | str | None] | None, int] | None,
    array: np.ndarray,
    bindings: Mapping[str, int],
) -> bool:
    """Whether ``array`` has the declared rank, static dims, bound symbolic dims and dtype (an undeclared
    shape or dtype fits nothing: it is measured instead)."""
    import onnx

    if declared is None:
        return False
    dims, elem_type = declared
    if dims is None or not elem_type or len(dims) != array.ndim:
        return False
    for dim, size in zip(dims, array.shape, strict=True):
        if isinstance(dim, int) and dim > 0 and dim != size:
            return False
        if isinstance(dim, str) and dim in bindings and bindings[dim] != size:
            return False
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    except (KeyError, ValueError, TypeError):
        return False
    return bool(np.dtype(dtype) == array.dtype)
