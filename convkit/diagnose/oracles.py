"""The executions localization compares onnxruntime with, and the cross-check that decides whether to trust
one of them on a node.

NOTE: why a cross-check: an oracle is a program with bugs of its own. onnx's reference implementation of
``BatchNormalization`` (opsets 9 to 13) normalizes with the batch's own statistics whenever the node carries a
``momentum`` attribute, which mx.onnx (0.9) and onnx-chainer (0.0) always write; trusted blindly, it accuses
the first BatchNorm of every such model. A node is named only when a second, independent execution of that
node alone sides with the oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from convkit.core.compare import Tolerance, compare_arrays
from convkit.core.runtime import SessionOptions, ort_session_options
from convkit.errors import ConvkitError
from convkit.graph.model import OnnxModel

ORACLES = ("reference", "unoptimized")

Evaluator = Callable[[Sequence[str], Mapping[str, np.ndarray]], list[np.ndarray]]


def with_outputs(proto: Any, names: Sequence[str]) -> Any:
    """A copy of ``proto`` whose graph outputs are ``names`` (types left to the runtime)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.graph.output[:]
    for name in names:
        copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


def onnxruntime_evaluator(proto: Any, level: str = "all") -> Evaluator:
    """Run ``proto`` in onnxruntime (CPU) with the requested values exposed as outputs."""
    import onnxruntime as ort

    def run(names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        options = ort_session_options(SessionOptions(provider="cpu", optimization=level))
        session = ort.InferenceSession(
            with_outputs(proto, names).SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        return list(session.run(list(names), dict(feeds)))

    return run


def reference_evaluator(proto: Any) -> Evaluator:
    """Run ``proto`` in onnx's reference implementation, with ``BatchNormalization`` as the specification
    defines inference (see the module's note)."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(proto, new_ops=[_batch_normalization()])

    def run(names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(evaluator.run(list(names), dict(feeds)))

    return run


def _batch_normalization() -> type:
    """An onnx reference op: inference (the running statistics) whenever the node asks only for ``Y`` and
    ``training_mode`` is not 1, as every runtime reads it; the training outputs ``(Y, running mean, running
    variance, batch mean, batch variance)`` otherwise."""
    from onnx.reference.op_run import OpRun

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x: Any, scale: Any, bias: Any, mean: Any, var: Any, **attributes: Any) -> Any:
            epsilon = attributes.get("epsilon")
            outputs = [o for o in self.onnx_node.output if o]
            shape = (-1,) + (1,) * (x.ndim - 2)
            used_mean, used_var = mean, var
            training = attributes.get("training_mode") == 1 or len(outputs) > 1
            if training:
                axes = tuple(a for a in range(x.ndim) if a != 1)
                used_mean, used_var = x.mean(axis=axes), x.var(axis=axes)
            eps = 1e-5 if epsilon is None else epsilon
            y = scale.reshape(shape) * (x - used_mean.reshape(shape)) / np.sqrt(used_var.reshape(shape) + eps)
            y = (y + bias.reshape(shape)).astype(x.dtype)
            if not training:
                return (y,)
            momentum = attributes.get("momentum")
            momentum = 0.9 if momentum is None else momentum
            running = [
                old * momentum + new * (1 - momentum) for old, new in ((mean, used_mean), (var, used_var))
            ]
            stats = (*running, used_mean, used_var)
            return (y, *(v.astype(x.dtype) for v in stats))[: len(outputs)]

    return BatchNormalization


def value_names(proto: Any) -> set[str]:
    names = {out for node in proto.graph.node for out in node.output if out}
    return names | {i.name for i in proto.graph.input}


def oracle_evaluator(model: OnnxModel, oracle: str | OnnxModel) -> tuple[Evaluator, str]:
    """The independent execution to compare onnxruntime with, and its name for reports."""
    if isinstance(oracle, OnnxModel):
        return onnxruntime_evaluator(oracle.proto), f"reference model {oracle.path.name}"
    if oracle == "reference":
        return reference_evaluator(model.proto), "onnx reference implementation"
    if oracle == "unoptimized":
        return onnxruntime_evaluator(model.proto, "disabled"), "unoptimized onnxruntime"
    raise ConvkitError(f"unknown oracle {oracle!r}", f"choose {', '.join(ORACLES)} or a reference model")


CROSS_CHECKS = {"reference": "unoptimized", "unoptimized": "reference"}
"""For each built-in oracle, the other one: what checks it on a node before the node is named."""


@dataclass
class CrossCheck:
    """What a second execution of one node alone says: ``verdict`` is ``confirmed`` (it sides with the
    oracle), ``disputed`` (it sides with onnxruntime) or ``unavailable`` (neither, or it could not run)."""

    verdict: str
    by: str
    detail: str = ""


def cross_check_node(
    proto: Any,
    index: int,
    oracle: str,
    inputs: Mapping[str, np.ndarray],
    expected: np.ndarray,
    actual: np.ndarray,
    tolerance: Tolerance | None,
) -> CrossCheck:
    """Run node ``index`` of ``proto`` alone in the other oracle (``CROSS_CHECKS[oracle]``) on ``inputs``
    (the oracle's values of its inputs) and say whether its output sides with the oracle's ``expected`` or
    with onnxruntime's ``actual``."""
    other = CROSS_CHECKS[oracle]
    by = "unoptimized onnxruntime" if other == "unoptimized" else "onnx reference implementation"
    node = proto.graph.node[index]
    output = next(o for o in node.output if o)
    try:
        single = _single_node_model(proto, node, inputs)
        evaluate = onnxruntime_evaluator(single, "disabled") if other == "unoptimized" else None
        evaluate = evaluate or reference_evaluator(single)
        (got,) = evaluate([output], {k: v for k, v in inputs.items() if k in _fed(single)})
    except Exception as exc:  # NOTE: why broad: any failure of the second opinion leaves the first standing
        return CrossCheck("unavailable", by, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    if compare_arrays(output, expected, got, tolerance).passed:
        return CrossCheck("confirmed", by)
    if compare_arrays(output, got, actual, tolerance).passed:
        return CrossCheck("disputed", by)
    return CrossCheck("unavailable", by, "it agrees with neither")


def _fed(proto: Any) -> set[str]:
    return {i.name for i in proto.graph.input}


def _single_node_model(proto: Any, node: Any, inputs: Mapping[str, np.ndarray]) -> Any:
    """A model of ``node`` alone: its initializers kept, its other inputs typed from ``inputs``."""
    import onnx
    from onnx import helper

    initializers = {t.name: t for t in proto.graph.initializer}
    fed = [i for i in dict.fromkeys(node.input) if i and i not in initializers]
    graph = helper.make_graph(
        [node],
        "cross_check",
        [
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(inputs[name].dtype), list(inputs[name].shape)
            )
            for name in fed
        ],
        [onnx.ValueInfoProto(name=o) for o in node.output if o],
        [initializers[i] for i in dict.fromkeys(node.input) if i in initializers],
    )
    single = helper.make_model(graph, opset_imports=list(proto.opset_import), functions=list(proto.functions))
    single.ir_version = proto.ir_version
    return single
