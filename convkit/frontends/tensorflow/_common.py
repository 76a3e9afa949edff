"""Helpers the TensorFlow front end's modules share: importing TensorFlow and Keras quietly, the loaded
SavedModel's signature, a Keras model's declared inputs, calling a model on named tensors, flattening its
outputs, and the first line of an exception.

A leaf: it imports no other module of the front end. TensorFlow and Keras are imported inside functions only.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convkit.errors import DataError
from convkit.frontends._quiet import Quiet

_AUTO_INPUT_NAME = re.compile(r"^(keras_tensor|input_layer)(_\d+)?$")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for a one-line error.

    Args:
        exc: the exception.

    Returns:
        Its message's first line, or the exception's type name when the message is empty.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def import_tf(verbose: bool = False) -> tuple[Any, Any]:
    """Import ``tensorflow`` and ``keras`` quietly (first import only).

    Args:
        verbose: show what TensorFlow prints instead of hiding it.

    Returns:
        The ``tensorflow`` and ``keras`` modules.
    """
    if "tensorflow" not in sys.modules and not verbose:
        # NOTE: why setdefault: a user who set TF_CPP_MIN_LOG_LEVEL wants that level; otherwise the C++
        # runtime's INFO/WARNING lines are noise in a tool whose output is a parity table.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with Quiet(verbose):
        import keras
        import tensorflow as tf
    return tf, keras


@dataclass
class SavedModelSignature:
    """A SavedModel folder loaded with ``tf.saved_model.load``: its serving function and what it takes.

    ``inputs`` are the signature's keyword arguments (name -> ``tf.TensorSpec``); outputs are the dict it
    returns, in natural key order (``output_0``, ``output_1`` ...).
    """

    path: Path
    signature: str
    function: Any
    inputs: dict[str, Any]
    holder: Any = field(repr=False, default=None)  # keeps the loaded object (and its variables) alive


@dataclass
class KerasInput:
    """One declared input of a Keras model."""

    name: str  # what convkit and the ONNX model call it
    key: str  # what Keras is called with (the input's name, or its key in a dict-structured model)
    tensor: Any  # the KerasTensor, for shape and dtype


def keras_inputs(model: Any) -> list[KerasInput] | None:
    """The declared inputs of a functional or built Sequential model.

    Args:
        model: a Keras model (or any object; only functional and built Sequential models declare inputs).

    Returns:
        One entry per input, in the model's order; ``None`` for subclassed models, which declare none.
    """
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    # NOTE: why the private attribute: a model built as keras.Model({"a": ..., "b": ...}, ...) is called
    # with a dict keyed by those keys, which need not be the tensors' names (Keras warns and keeps the keys).
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, Mapping) and len(struct) == len(inputs):
        pairs = [(str(key), str(key), tensor) for key, tensor in struct.items()]
    else:
        pairs = [(str(t.name), str(t.name), t) for t in inputs]
    entries = []
    automatic = [name for name, _, _ in pairs if _AUTO_INPUT_NAME.match(name)]
    for position, (name, key, tensor) in enumerate(pairs):
        # NOTE: why: an Input without a name gets keras_tensor_<counter>, different in every process;
        # the ONNX model gets a stable name instead.
        if _AUTO_INPUT_NAME.match(name):
            name = "input" if len(automatic) == 1 else f"input_{position}"
        entries.append(KerasInput(name.split(":")[0], key, tensor))
    return entries


def call_model(model: Any, named: Mapping[str, Any]) -> Any:
    """Call the model on named tensors in inference mode.

    SavedModels are called by keyword; Keras models with their input names (a dict for several inputs)
    or, when the names are not the model's, positionally in the given order.

    Args:
        model: a Keras model, a ``tf.Module`` or a ``SavedModelSignature``.
        named: input name -> tensor, in the model's input order.

    Returns:
        What the model returns (a SavedModel's dict in natural key order).
    """
    if isinstance(model, SavedModelSignature):
        if set(named) != set(model.inputs):
            named = dict(zip(model.inputs, named.values(), strict=True))
        outputs = model.function(**named)
        return {key: outputs[key] for key in sorted(outputs, key=natural_key)}
    inputs = keras_inputs(model)
    values = list(named.values())
    # NOTE: why no annotated variable here: this runs inside tf.function, whose AutoGraph rewrites it
    # (and gives up, with a warning, on an annotated variable assigned in branches).
    argument = values[0] if len(values) == 1 else values
    if inputs is not None and {entry.name for entry in inputs} == set(named):
        if len(inputs) == 1:
            argument = named[inputs[0].name]
        else:
            argument = {entry.key: named[entry.name] for entry in inputs}
    try:
        return model(argument, training=False)
    except TypeError as exc:
        # NOTE: why: a tf.Module's __call__ need not take ``training``; Keras layers always do.
        if "training" not in str(exc):
            raise
        return model(argument)


def natural_key(text: str) -> list[Any]:
    """A sort key that puts ``output_2`` before ``output_10``.

    Args:
        text: the name to sort.

    Returns:
        Its text and number parts, the numbers as integers.
    """
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def flatten(outputs: Any, prefix: str | None = None) -> list[tuple[str | None, Any]]:
    """A model's outputs in order as (key, tensor).

    Args:
        outputs: what the model returned: a tensor, or dicts, lists and tuples of them.
        prefix: the key of ``outputs`` itself, when it is an entry of a dict.

    Returns:
        Dicts keep their key order (and name the output, nested keys joined with ``.``), lists and tuples
        their position; ``None`` entries are dropped.
    """
    if outputs is None:
        return []
    if isinstance(outputs, Mapping):
        flat: list[tuple[str | None, Any]] = []
        for key, value in outputs.items():
            flat.extend(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(outputs, list | tuple):
        return [item for value in outputs for item in flatten(value, prefix)]
    return [(prefix, outputs)]


def run(model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run in inference mode (``training=False``).

    Args:
        model: a Keras model, a ``tf.Module`` or a ``SavedModelSignature``.
        inputs: input name -> array.

    Returns:
        The outputs flattened in order (dict outputs in their key order).

    Raises:
        DataError: the model rejects the inputs.
    """
    tf, _ = import_tf()
    tensors = {name: tf.convert_to_tensor(np.asarray(value)) for name, value in inputs.items()}
    try:
        with Quiet():
            outputs = call_model(model, tensors)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:
        shapes = ", ".join(f"{name} {list(np.shape(value))}" for name, value in inputs.items())
        raise DataError(
            f"the model rejected the inputs ({shapes}): {first_line(exc)}",
            "check the input names, shapes and dtypes (--input NAME:DIMS:DTYPE)",
        ) from exc
    return [np.asarray(value) for _, value in flatten(outputs)]


def dtype_name(dtype: Any) -> str:
    """The name of a TensorFlow, Keras or NumPy dtype (``float32``).

    Args:
        dtype: the dtype, or its name.

    Returns:
        Its name.
    """
    return str(getattr(dtype, "name", dtype))
