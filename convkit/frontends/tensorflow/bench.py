"""The native contenders for ``convkit bench`` against Keras: the model called eagerly, and the same call
in a ``tf.function`` graph."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from convkit.frontends._quiet import Quiet
from convkit.frontends.tensorflow._common import call_model, flatten, import_tf


def benchmark_runners(model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    """Zero-argument calls for ``convkit bench``: ``keras eager`` (``model(x, training=False)``) and
    ``keras tf.function`` (the same call in a graph, without XLA), each returning NumPy arrays.

    NOTE: why the inputs become tensors once, here: converting NumPy arrays on every call would time a
    copy onnxruntime does not make; why ``.numpy()``: TensorFlow may return before the work is done
    (and so that both contenders hand back what onnxruntime hands back).

    Args:
        model: what the front end's ``load`` returned.
        inputs: input name -> array, the data every call runs on.

    Returns:
        Contender name -> call; ``keras tf.function`` is left out when the model cannot be traced.
    """
    tf, _ = import_tf()
    names = list(inputs)
    tensors = [tf.convert_to_tensor(np.asarray(inputs[name])) for name in names]

    def call(*args: Any) -> Any:
        return call_model(model, dict(zip(names, args, strict=True)))

    def eager() -> list[np.ndarray]:
        return [value.numpy() for _, value in flatten(call(*tensors))]

    # NOTE: why jit_compile=False: XLA is a different compiler with its own numerics and a long first
    # compile; the contender is TensorFlow's ordinary graph mode. The signature keeps one trace for
    # these shapes.
    graph = tf.function(
        call,
        input_signature=[tf.TensorSpec(t.shape, t.dtype) for t in tensors],
        jit_compile=False,
    )

    def compiled() -> list[np.ndarray]:
        return [value.numpy() for _, value in flatten(graph(*tensors))]

    runners: dict[str, Callable[[], Any]] = {"keras eager": eager}
    # NOTE: why trace now: the first call traces the model (seconds); that belongs to setup, not to the
    # first timed call. A model that cannot be traced is left out rather than failing the benchmark.
    try:
        with Quiet():
            compiled()
    except Exception:
        return runners
    runners["keras tf.function"] = compiled
    return runners
