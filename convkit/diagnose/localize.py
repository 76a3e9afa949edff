"""Where parity breaks: the first node whose output diverges while its inputs still agree.

The model under test runs in onnxruntime (all graph optimizations) with its intermediate values exposed,
and each value is compared with an independent execution of the same value:

- ``reference``: the reference implementation that ships with onnx (``onnx.reference.ReferenceEvaluator``),
  the executable form of the ONNX specification;
- ``unoptimized``: onnxruntime with graph optimizations disabled;
- another ONNX model whose values carry the same names (the original of an edited, optimized or suspect
  file).

Values are exposed a chunk of nodes at a time and only their differences are kept, so memory stays bounded.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.compare import OutputComparison, Tolerance, compare_arrays
from convkit.core.runtime import SessionOptions, ort_session_options
from convkit.errors import ConvkitError
from convkit.frontends.base import LayerPairing
from convkit.graph.model import OnnxModel

ORACLES = ("reference", "unoptimized")
DEFAULT_CHUNK = 64

# ONNX node metadata that names where a node came from in the source framework (torch.export-based exporter)

Evaluator = Callable[[Sequence[str], Mapping[str, np.ndarray]], list[np.ndarray]]


@dataclass
class Divergence:
    """The node that first goes wrong, with its inputs' and output's errors."""

    node: str
    op_type: str
    inputs: list[str]
    output: str
    comparison: OutputComparison
    inputs_max_abs_diff: float | None
    """None where the inputs were not compared (against the framework's layers)."""
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "inputs": self.inputs,
            "output": self.output,
            "source": self.source,
            "inputs_max_abs_diff": self.inputs_max_abs_diff,
            "output_max_abs_diff": self.comparison.max_abs_diff,
            "min_passing_atol": self.comparison.min_passing_atol,
            "reason": self.comparison.reason,
        }


@dataclass
class Localization:
    """What was compared with what, and the first divergence (``None`` when every value agrees)."""

    oracle: str
    checked_values: int = 0
    first: Divergence | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "oracle": self.oracle,
            "checked_values": self.checked_values,
            "first_divergence": None if self.first is None else self.first.to_dict(),
            "notes": self.notes,
        }

    def describe(self) -> str:
        if self.first is None:
            count = self.checked_values
            if self.oracle.endswith(" layers"):
                return (
                    f"no layer diverges between onnxruntime and the {self.oracle} ({count} compared); "
                    "the difference arises after the last paired layer, or in values no layer owns"
                )
            return (
                f"no value diverges between onnxruntime and the {self.oracle} ({count} compared): "
                "onnxruntime computes what the graph says, so differences come from the graph or weights"
            )
        d = self.first
        if self.oracle.endswith(" layers"):
            return (
                f"first divergence against the {self.oracle}: layer {d.source!r} (ONNX value {d.output!r}, "
                f"node {d.node!r}, {d.op_type}) differs by {_fmt(d.comparison.max_abs_diff)}; "
                "every layer before it agrees"
            )
        where = f" (from {d.source})" if d.source else ""
        return (
            f"first divergence against the {self.oracle}: node {d.node!r} ({d.op_type}){where}: output "
            f"{d.output!r} differs by {_fmt(d.comparison.max_abs_diff)} while its inputs agree within "
            f"{_fmt(d.inputs_max_abs_diff)}"
        )


def _fmt(value: float | None) -> str:
    return "an undefined amount" if value is None else f"{value:.3g}"


def node_source(node: Any) -> str | None:
    """The framework module or layer a node came from, when the exporter recorded it: the PyTorch module
    path and source line (``conv1 (model.py:36)``), or the recorded namespace as it is."""
    props = {p.key: p.value for p in node.metadata_props}
    scopes = props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            names = [str(n) for n in ast.literal_eval(scopes) if n]
        except (ValueError, SyntaxError):
            names = []
        if names:
            # NOTE: why drop the last scope: it names the aten call (``conv2d``) inside the module
            path = ".".join(names[:-1]) or names[-1]
            line = re.search(r'File "([^"]+)", line (\d+)', props.get("pkg.torch.onnx.stack_trace", ""))
            return f"{path} ({Path(line.group(1)).name}:{line.group(2)})" if line else path
    return props.get("namespace") or None


def node_label(proto: Any, index: int) -> str:
    node = proto.graph.node[index]
    return node.name or f"{node.op_type}#{index}"


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
    """Run ``proto`` in onnx's reference implementation."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(proto)

    def run(names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(evaluator.run(list(names), dict(feeds)))

    return run


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


def localize(
    model: OnnxModel,
    feeds: Mapping[str, np.ndarray],
    oracle: str | OnnxModel = "reference",
    tolerance: Tolerance | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> Localization:
    """Find the first node (graph order, which ONNX requires to be topological) whose output differs from
    the oracle's while every input it reads still agrees.

    Args:
        oracle: ``reference``, ``unoptimized``, or a reference ``OnnxModel`` with the same value names.
        chunk: how many nodes' outputs are exposed per run (bounds memory).
    """
    proto = model.proto
    actual = onnxruntime_evaluator(proto)
    expected, description = oracle_evaluator(model, oracle)
    comparable = value_names(proto)
    if isinstance(oracle, OnnxModel):
        comparable &= value_names(oracle.proto)
        if not comparable - set(feeds):
            raise ConvkitError(
                f"{model.path.name} and {oracle.path.name} share no value names to compare",
                "localize against the reference implementation instead (--oracle reference)",
            )
    result = Localization(oracle=description)
    agree: dict[str, tuple[bool, float]] = {name: (True, 0.0) for name in feeds}
    indexed = list(enumerate(proto.graph.node))
    for start in range(0, len(indexed), chunk):
        group = indexed[start : start + chunk]
        names = [out for _, node in group for out in node.output if out in comparable]
        if not names:
            continue
        pairs = dict(zip(names, zip(expected(names, feeds), actual(names, feeds), strict=True), strict=True))
        for index, node in group:
            read = [i for i in node.input if i in agree]
            inputs_ok = all(agree[i][0] for i in read)
            input_diff = max((agree[i][1] for i in read), default=0.0)
            for out in (o for o in node.output if o in pairs):
                comparison = compare_arrays(out, pairs[out][0], pairs[out][1], tolerance)
                result.checked_values += 1
                diff = comparison.max_abs_diff
                agree[out] = (comparison.passed, float("inf") if diff is None else diff)
                if not comparison.passed and inputs_ok and result.first is None:
                    result.first = Divergence(
                        node_label(proto, index),
                        node.op_type,
                        [i for i in node.input if i],
                        out,
                        comparison,
                        input_diff,
                        node_source(node),
                    )
        if result.first is not None:
            break
    return result


def localize_against_framework(
    model: OnnxModel,
    frontend: Any,
    native: Any,
    feeds: Mapping[str, np.ndarray],
    tolerance: Tolerance | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> Localization:
    """Name the first framework layer (module) whose ONNX counterpart diverges from the framework's own
    activation, using the front end's ``layer_outputs`` pairing (see ``frontends.base.LayerPairing``).
    """
    result = Localization(oracle=f"{frontend.name} layers")
    if not isinstance(frontend, LayerPairing):
        result.notes.append(f"the {frontend.name} front end cannot pair its layers with ONNX values")
        return result
    paired = frontend.layer_outputs(native, model.proto, feeds)
    layers = [p for p in paired if p.onnx_value in value_names(model.proto)]
    producer = {out: (i, node) for i, node in enumerate(model.proto.graph.node) for out in node.output}
    actual = onnxruntime_evaluator(model.proto)
    for start in range(0, len(layers), chunk):
        group = layers[start : start + chunk]
        values = actual([p.onnx_value for p in group], feeds)
        for pair, got in zip(group, values, strict=True):
            comparison = compare_arrays(pair.onnx_value, pair.value, got, tolerance)
            result.checked_values += 1
            if comparison.passed:
                continue
            index, node = producer.get(pair.onnx_value, (-1, None))
            result.first = Divergence(
                node=node_label(model.proto, index) if node is not None else pair.onnx_value,
                op_type=node.op_type if node is not None else "input",
                inputs=[i for i in node.input if i] if node is not None else [],
                output=pair.onnx_value,
                comparison=comparison,
                inputs_max_abs_diff=None,
                source=pair.layer,
            )
            return result
    return result
