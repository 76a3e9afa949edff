"""Run an ONNX model on data with onnxruntime (``convkit run``): the session, and the outputs it gives."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from convkit.core.artifacts import (
    load_arrays,
)
from convkit.core.runtime import RuntimeSession, SessionOptions, short_provider_name
from convkit.graph.model import OnnxModel, load_onnx


def _static_shapes(data: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(np.shape(value)) for name, value in data.items()}


def open_session(
    model: OnnxModel, options: SessionOptions | None = None, example: Mapping[str, np.ndarray] | None = None
) -> RuntimeSession:
    """An onnxruntime session; ``example`` data lets old-opset models with symbolic dims be upgraded."""
    return RuntimeSession(model, options, static_shapes=_static_shapes(example) if example else None)


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    provider: str
    notes: list[str] = field(default_factory=list)


def run_model(
    path: str | os.PathLike[str], data: str | os.PathLike[str], options: SessionOptions | None = None
) -> RunResult:
    """Run an ONNX model on ``data`` (``.npz``, ``.npy`` or a ``test_data_set_N`` folder)."""
    model = load_onnx(path, weights=False)
    feeds = load_arrays(data, model.input_names)
    session = open_session(model, options, feeds)
    outputs = session.run(feeds)
    return RunResult(outputs, short_provider_name(session.provider), model.notes + session.notes)
