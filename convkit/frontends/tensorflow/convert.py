"""tf2onnx, step by step: trace the call into a concrete function, freeze it, inline the functions TensorFlow
kept apart, and convert the frozen graph, with the op handlers tf2onnx lacks.

NOTE: why not ``tf2onnx.convert.from_function``, which does the same in one call: it takes the graph inputs
from ``concrete_function.inputs``, which also lists the tensors the function *captured*. A Keras layer
holding plain tensors rather than variables (``Normalization``, whose mean and variance are tensors made
when it is built or adapted; EfficientNet starts with one) then exports with those constants as graph
inputs, and the model cannot run without them. Here the inputs are the signature's placeholders only; the
freezing (TensorFlow's own ``convert_variables_to_constants_v2``, through tf2onnx's loader) turns every
capture, variable or tensor, into a constant, and the constants become initializers.

NOTE: why the functions are inlined again: Keras compiles some ops with XLA (``tf.function(jit_compile=True)``
around grouped convolutions on the TensorFlow backend: ConvNeXt's depthwise 7x7, a ``Conv2D`` with
``groups``, in every block), and such a function carries ``_XlaMustCompile`` and ``_noinline``, so
grappler's inliner leaves it as a ``StatefulPartitionedCall``, which tf2onnx cannot convert. Nothing is
compiled in an export; the marks are dropped from the frozen graph and grappler runs again, so the calls
are inlined like any other.

TensorFlow and tf2onnx are imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

# the attributes that keep grappler from inlining a function call
_NO_INLINE_MARKS = ("_XlaMustCompile", "_noinline")
_CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")


def convert(
    call: Callable[..., Any], signature: Sequence[Any], opset: int, large_model: bool
) -> tuple[onnx.ModelProto, Any]:
    """Trace ``call`` with ``signature`` and convert it with tf2onnx.

    Args:
        call: the function of the inputs to export (the model's call, outputs flattened).
        signature: one ``tf.TensorSpec`` per input, named after the placeholder the ONNX input takes.
        opset: the ONNX opset to write.
        large_model: keep the tensors' bytes aside (tf2onnx's large-model path, past protobuf's 2 GB).

    Returns:
        The ONNX model (inputs named after the placeholders, with a ``:0`` suffix; outputs in ``call``'s
        order) and tf2onnx's external tensor storage (``None`` unless ``large_model``).
    """
    import tensorflow as tf
    from tf2onnx import tf_loader

    register_handlers()
    concrete = tf.function(call, input_signature=list(signature)).get_concrete_function(*signature)
    captured = {tensor.name for tensor in concrete.graph.internal_captures}
    inputs = [t.name for t in concrete.inputs if t.dtype != tf.resource and t.name not in captured]
    outputs = [t.name for t in concrete.outputs if t.dtype != tf.resource]
    with tf.device("/cpu:0"):
        frozen = tf_loader.from_function(concrete, inputs, outputs, large_model=large_model)
        # NOTE: why not on the large-model path: tf2onnx skips grappler there (a graph past 2 GB cannot be
        # serialized for it), so nothing is inlined on that path in any case.
        if unmark_calls(frozen) and not large_model:
            frozen = _inline(frozen, inputs, outputs)
        model, storage = _convert_frozen(frozen, concrete.name, inputs, outputs, opset, large_model)
    return model, storage


def _convert_frozen(
    frozen: Any, name: str, inputs: list[str], outputs: list[str], opset: int, large_model: bool
) -> tuple[onnx.ModelProto, Any]:
    """tf2onnx's conversion of a frozen graph, first without its safety copies, then, if that fails, with.

    NOTE: why tf2onnx's private ``_convert_common``: it is what ``from_function`` and ``from_graph_def``
    call after freezing; the public ``from_graph_def`` would freeze and optimize the frozen graph once more.

    NOTE: why first without copies: tf2onnx deep-copies the whole graph, weights included, before each of
    its ~50 optimizer passes, to fall back to the copy if a pass fails: half of a ConvNeXtTiny export
    (16 of 30 s here). Passes rarely fail; when one does, the conversion runs again with the copies, from
    the same frozen graph, and skips that pass as tf2onnx does by default.
    """
    import os

    import tf2onnx
    from tf2onnx import constants

    def run() -> tuple[onnx.ModelProto, Any]:
        result: tuple[onnx.ModelProto, Any] = tf2onnx.convert._convert_common(
            frozen,
            name=name,
            continue_on_error=True,
            opset=opset,
            input_names=inputs,
            output_names=outputs,
            large_model=large_model,
        )
        return result

    variable = constants.ENV_TF2ONNX_CATCH_ERRORS
    if variable in os.environ or large_model:  # the user's choice; the large-model path never copies
        return run()
    os.environ[variable] = "FALSE"
    try:
        return run()
    except Exception:
        del os.environ[variable]
        return run()
    finally:
        os.environ.pop(variable, None)


def unmark_calls(graph_def: Any) -> int:
    """Drop the marks that keep grappler from inlining function calls (see the module's NOTE).

    Args:
        graph_def: a frozen ``tf.compat.v1.GraphDef``, changed in place.

    Returns:
        How many call nodes carried a mark.
    """
    marked = 0
    for node in graph_def.node:
        if node.op in _CALL_OPS and any(mark in node.attr for mark in _NO_INLINE_MARKS):
            marked += 1
        for mark in _NO_INLINE_MARKS:
            if mark in node.attr:
                del node.attr[mark]
    for function in graph_def.library.function:
        for mark in _NO_INLINE_MARKS:
            if mark in function.attr:
                del function.attr[mark]
        for node in function.node_def:
            for mark in _NO_INLINE_MARKS:
                if mark in node.attr:
                    del node.attr[mark]
    return marked


def _inline(graph_def: Any, inputs: list[str], outputs: list[str]) -> Any:
    """Run tf2onnx's grappler pass (constant folding, function inlining) over a frozen graph, as its
    ``from_function`` does, in a graph of its own."""
    import tensorflow as tf
    from tf2onnx import tf_loader

    with tf.Graph().as_default() as graph, tf_loader.tf_session(graph=graph):
        tf.import_graph_def(graph_def, name="")
        return tf_loader.tf_optimize(inputs, outputs, graph_def)


def register_handlers() -> None:
    """Teach tf2onnx the TensorFlow ops it has no handler for: ``Erfc`` (exact GELU: Keras's default
    ``gelu`` computes ``0.5 * x * erfc(-x / sqrt(2))``) as ``1 - Erf(x)``, from opset 9 (``Erf``'s first).

    A handler tf2onnx itself has (a later version) is left in place.
    """
    import tf2onnx.tfonnx  # noqa: F401 (registers tf2onnx's own handlers, which are looked at first)
    from tf2onnx import constants, utils
    from tf2onnx.handler import tf_op

    opsets = tf_op.get_opsets().get(constants.ONNX_DOMAIN, [])
    if any("Erfc" in handlers for handlers in opsets):
        return

    @tf_op("Erfc")
    class Erfc:
        @classmethod
        def version_9(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
            dtype = ctx.get_dtype(node.input[0])
            value = np.array(1, utils.map_onnx_to_numpy_type(dtype))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), value)
            node.type = "Erf"
            inputs = [one.output[0], node.output[0]]
            minus = ctx.insert_new_node_on_output("Sub", node.output[0], utils.make_name(node.name), inputs)
            ctx.copy_shape(node.output[0], minus.output[0])
            ctx.set_dtype(minus.output[0], dtype)


def handled_from(op: str) -> int | None:
    """The lowest ONNX opset at which tf2onnx (with ``register_handlers``) converts the TensorFlow op ``op``,
    ``None`` when it converts it at none."""
    from tf2onnx import constants
    from tf2onnx.handler import tf_op

    register_handlers()
    for version, handlers in enumerate(tf_op.get_opsets().get(constants.ONNX_DOMAIN, [])):
        if op in handlers:
            return version
    return None
