"""Running a JAX model natively: the reference outputs (eager calls on ``jax.Array`` inputs) and the
runners ``convkit bench`` times (eager and ``jax.jit``).

Outputs are flattened as ``jax.tree_util`` does (dicts by sorted key, ``None`` dropped), the order of the
exported graph's outputs. JAX and Flax are imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from convkit.errors import ConvkitError, DataError
from convkit.frontends._quiet import Quiet
from convkit.frontends.jax._common import first_line, import_jax, ordered


def run_model(model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Call ``model`` eagerly on ``jax.Array`` inputs, positionally in its parameter order.

    Args:
        model: an NNX module or a JAX callable.
        inputs: the arrays by input name.

    Returns:
        The outputs' leaves as NumPy arrays, in ``jax.tree_util`` order.

    Raises:
        DataError: the model rejects the inputs (a ``TypeError`` or ``ValueError``).
    """
    jax, _ = import_jax()
    arrays = ordered(model, inputs)
    try:
        with Quiet():
            outputs = model(*[jax.numpy.asarray(value) for value in arrays.values()])
            leaves = jax.tree_util.tree_leaves(outputs)
            return [np.asarray(leaf) for leaf in leaves]
    except ConvkitError:
        raise
    except (TypeError, ValueError) as exc:
        shapes = ", ".join(f"{name} {list(np.shape(value))}" for name, value in arrays.items())
        raise DataError(
            f"the model rejected the inputs ({shapes}): {type(exc).__name__}: {first_line(exc)}",
            "check the input names, shapes and dtypes (--input NAME:DIMS:DTYPE)",
        ) from exc


def benchmark_runners(model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    """Zero-argument calls for ``convkit bench``: ``jax eager`` and, where XLA compiles it, ``jax.jit``.

    NOTE: why the inputs become ``jax.Array`` once, here: converting NumPy arrays on every call would time
    a copy onnxruntime does not make; why NumPy results: JAX dispatches asynchronously, and converting
    waits for the work (and hands back what onnxruntime hands back).

    Args:
        model: an NNX module or a JAX callable.
        inputs: the arrays by input name.

    Returns:
        The runners by name, each returning the outputs as NumPy arrays; ``jax.jit`` already compiled.
    """
    jax, nnx = import_jax()
    arrays = [jax.numpy.asarray(value) for value in ordered(model, inputs).values()]

    def eager() -> list[np.ndarray]:
        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(model(*arrays))]

    if isinstance(model, nnx.Module):
        # NOTE: why split and merge: the idiomatic way to jit a module's call; the parameters are an
        # argument of the compiled function, not constants folded into it.
        graphdef, state = nnx.split(model)
        compiled = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args))

        def call() -> Any:
            return compiled(state, *arrays)
    else:
        jitted = jax.jit(model)

        def call() -> Any:
            return jitted(*arrays)

    def run_jit() -> list[np.ndarray]:
        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(call())]

    runners: dict[str, Callable[[], Any]] = {"jax eager": eager}
    # NOTE: why compile now: the first call compiles (seconds); that belongs to setup, not to the first
    # timed call. A model XLA cannot compile is left out rather than failing the benchmark.
    try:
        with Quiet():
            run_jit()
    except Exception:
        return runners
    runners["jax.jit"] = run_jit
    return runners
