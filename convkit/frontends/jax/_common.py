"""Helpers the JAX front end's modules share: importing JAX quietly, the model's input order, package
versions, the first line of an exception.

A leaf: it imports no other module of the front end. JAX and Flax are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from convkit.frontends._quiet import Quiet


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for a one-line error.

    Args:
        exc: the exception.

    Returns:
        Its message's first line, or the exception's type name when the message is empty.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def import_jax(verbose: bool = False) -> tuple[Any, Any]:
    """Import ``jax`` and ``flax.nnx`` and start JAX's backend, quietly.

    Args:
        verbose: show what JAX prints instead of hiding it.

    Returns:
        The ``jax`` and ``flax.nnx`` modules.
    """
    if "jax" not in sys.modules and not verbose:
        # NOTE: why setdefault: a user who set TF_CPP_MIN_LOG_LEVEL wants that level; otherwise XLA's C++
        # INFO/WARNING lines are noise in a tool whose output is a parity table.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with Quiet(verbose):
        import jax
        from flax import nnx
    with Quiet(verbose):  # a second block: the jax logger is silenced only once jax is imported
        # NOTE: why start the backend here: its first use logs a warning on a GPU machine whose jaxlib is
        # the CPU build ("Falling back to cpu"); a factory making arrays would otherwise print it.
        jax.devices()
    return jax, nnx


def package_versions() -> dict[str, str]:
    """Versions of ``jax``, ``jaxlib``, ``flax`` and ``jax2onnx``, those installed."""
    found = {}
    for package in ("jax", "jaxlib", "flax", "jax2onnx"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def positional_parameters(model: Any) -> list[str] | None:
    """Required positional parameter names of ``model``'s call (``__call__`` for a module).

    Args:
        model: an NNX module or a JAX callable.

    Returns:
        The names in order; ``None`` where the signature is unreadable, takes ``*args``, or has none.
    """
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):
        return None
    names = []
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return None
        positional = parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        if positional and parameter.default is parameter.empty:
            names.append(parameter.name)
    return names or None


def ordered(model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` in the model's parameter order where the names are the parameters, else as given.

    Args:
        model: an NNX module or a JAX callable.
        inputs: the arrays by input name.

    Returns:
        The same arrays, in the order the model takes them positionally.
    """
    names = positional_parameters(model)
    if names is not None and set(names) == set(inputs):
        return {name: inputs[name] for name in names}
    return dict(inputs)
