"""Where parity breaks: the first node whose output diverges while its inputs still agree.

The model under test runs in onnxruntime (all graph optimizations) with its intermediate values exposed,
and each value is compared with an independent execution of the same value:

- ``reference``: the reference implementation that ships with onnx (``onnx.reference.ReferenceEvaluator``),
  the executable form of the ONNX specification;
- ``unoptimized``: onnxruntime with graph optimizations disabled;
- another ONNX model whose values carry the same names (the original of an edited, optimized or suspect
  file).

Values are exposed a chunk of nodes at a time and only their differences are kept, so memory stays bounded.
Before a node is named against a built-in oracle, the other one runs that node alone on the same inputs
(``convkit.diagnose.oracles``): a node where the two oracles disagree is reported as disputed, not accused.
"""

from __future__ import annotations

import ast
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.compare import OutputComparison, Tolerance, compare_arrays
from convkit.diagnose.oracles import (
    CROSS_CHECKS,
    ORACLES,
    Evaluator,
    cross_check_node,
    onnxruntime_evaluator,
    oracle_evaluator,
    reference_evaluator,
    value_names,
    with_outputs,
)
from convkit.errors import ConvkitError
from convkit.frontends.base import LayerPairing
from convkit.graph.model import OnnxModel

__all__ = [
    "ORACLES",
    "Divergence",
    "Evaluator",
    "Localization",
    "localize",
    "localize_against_framework",
    "node_label",
    "node_source",
    "onnxruntime_evaluator",
    "oracle_evaluator",
    "reference_evaluator",
    "value_names",
    "with_outputs",
]

DEFAULT_CHUNK = 64


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
    """What was compared with what, and the first divergence (``None`` when every value compared agrees).

    The counts say how far the claim reaches: ``values_total`` values the model computes, ``checked_values``
    of them compared, ``paired_values`` paired with a framework layer (framework oracle), ``unpaired`` the op
    types of the values that were never paired with anything to compare (by count).
    """

    oracle: str
    checked_values: int = 0
    first: Divergence | None = None
    notes: list[str] = field(default_factory=list)
    values_total: int = 0
    paired_values: int | None = None
    """Values paired with a framework layer (``None`` for the ONNX oracles, which pair every value)."""
    unpaired: dict[str, int] = field(default_factory=dict)
    cross_check: str | None = None
    disputed: list[dict[str, Any]] = field(default_factory=list)
    """Nodes the oracle would have named but the cross-check sided with onnxruntime on (not accused)."""
    compared: list[OutputComparison] = field(default_factory=list)
    """Every value's comparison, in the order made (the HTML report draws them; not in ``to_dict``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "oracle": self.oracle,
            "checked_values": self.checked_values,
            "values_total": self.values_total,
            "paired_values": self.paired_values,
            "unpaired": dict(self.unpaired),
            "cross_check": self.cross_check,
            "disputed": list(self.disputed),
            "first_divergence": None if self.first is None else self.first.to_dict(),
            "notes": self.notes,
        }

    def coverage(self) -> str:
        """How many values were paired and compared, and which were not: the same counts as ``to_dict``."""
        if self.paired_values is not None:
            text = (
                f"{self.paired_values} of the model's {self.values_total} values paired with a layer, "
                f"{self.checked_values} compared"
            )
        else:
            text = f"{self.checked_values} of {self.values_total} values compared"
        if self.unpaired:
            ops = sorted(self.unpaired.items(), key=lambda item: (-item[1], item[0]))
            listed = ", ".join(f"{count} {op}" for op, count in ops[:6])
            more = sum(count for _, count in ops[6:])
            text += f"; not paired: {listed}" + (f" and {more} more" if more else "")
        return text

    def describe(self) -> str:
        """One paragraph that claims no more than the counts and the JSON report hold."""
        layers = self.oracle.endswith(" layers")
        disputes = "".join(
            f"; node {d['node']!r} ({d['op_type']}) is disputed, not named: the {d['oracle']} differs by "
            f"{_fmt(d['output_max_abs_diff'])} but {d['cross_check']} agrees with onnxruntime"
            for d in self.disputed
        )
        if self.first is None:
            if layers and self.checked_values == 0:
                return f"nothing compared against the {self.oracle}: no layer paired ({self.coverage()})"
            if layers:
                return (
                    f"no layer diverges between onnxruntime and the {self.oracle} ({self.coverage()}); "
                    "the difference arises after the last paired layer, or in values no layer owns"
                )
            return (
                f"no value diverges between onnxruntime and the {self.oracle} ({self.coverage()}){disputes}"
            )
        d = self.first
        if layers:
            before = self.checked_values - 1
            return (
                f"first divergence against the {self.oracle}: layer {d.source!r} (ONNX value {d.output!r}, "
                f"node {d.node!r}, {d.op_type}) differs by {_fmt(d.comparison.max_abs_diff)}; the {before} "
                f"paired layer(s) compared before it agree ({self.coverage()})"
            )
        where = f" (from {d.source})" if d.source else ""
        checked = f"; {self.cross_check} confirms it" if self.cross_check else ""
        return (
            f"first divergence against the {self.oracle}: node {d.node!r} ({d.op_type}){where}: output "
            f"{d.output!r} differs by {_fmt(d.comparison.max_abs_diff)} while its inputs agree within "
            f"{_fmt(d.inputs_max_abs_diff)}{checked} ({self.coverage()}, up to this node){disputes}"
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
            frame = _user_frame(props.get("pkg.torch.onnx.stack_trace", ""))
            return f"{path} ({frame})" if frame else path
    return props.get("namespace") or None


_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)


def _user_frame(stack_trace: str) -> str | None:
    """``file.py:LINE`` of the innermost frame in the user's code: the trace runs outermost first and also
    holds convkit's own wrapper and torch's internals, which name nothing the user wrote."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', stack_trace)
    user = [(f, n) for f, n in frames if not f.startswith(_PACKAGE_DIR) and f"{os.sep}torch{os.sep}" not in f]
    chosen = (user or frames)[-1:]
    return f"{Path(chosen[0][0]).name}:{chosen[0][1]}" if chosen else None


def node_label(proto: Any, index: int) -> str:
    node = proto.graph.node[index]
    return node.name or f"{node.op_type}#{index}"


def localize(
    model: OnnxModel,
    feeds: Mapping[str, np.ndarray],
    oracle: str | OnnxModel = "reference",
    tolerance: Tolerance | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> Localization:
    """Find the first node (graph order, which ONNX requires to be topological) whose output differs from
    the oracle's while every input it reads still agrees, and that a second oracle confirms.

    Args:
        oracle: ``reference``, ``unoptimized``, or a reference ``OnnxModel`` with the same value names.
        chunk: how many nodes' outputs are exposed per run (bounds memory).
    """
    found = _scan(model, feeds, oracle, tolerance, chunk)
    if found.disputed and found.first is None and isinstance(oracle, str):
        # NOTE: why again with the other oracle: past a disputed node the oracle's values derive from its own
        # suspect output, so no later node could be judged; the other oracle can still look there.
        other = CROSS_CHECKS[oracle]
        again = _scan(model, feeds, other, tolerance, chunk)
        again.disputed[:0] = found.disputed
        again.notes[:0] = [
            *found.notes,
            f"the {found.oracle} was not trusted past node {found.disputed[0]['node']!r}; "
            f"localized against the {again.oracle} instead",
        ]
        return again
    return found


def _scan(
    model: OnnxModel,
    feeds: Mapping[str, np.ndarray],
    oracle: str | OnnxModel,
    tolerance: Tolerance | None,
    chunk: int,
) -> Localization:
    """One pass over the graph against ``oracle``; stops at the first named or disputed node."""
    proto = model.proto
    actual = onnxruntime_evaluator(proto)
    expected, description = oracle_evaluator(model, oracle)
    produced = _produced(proto)
    comparable = set(produced)
    if isinstance(oracle, OnnxModel):
        comparable &= value_names(oracle.proto)
        if not comparable:
            raise ConvkitError(
                f"{model.path.name} and {oracle.path.name} share no value names to compare",
                "localize against the reference implementation instead (--oracle reference)",
            )
    kind = oracle if isinstance(oracle, str) else None
    result = Localization(
        oracle=description,
        values_total=len(produced),
        unpaired=_op_counts(proto, set(produced) - comparable),
        # NOTE: why no cross-check against a reference model: it is the user's chosen truth, and its nodes
        # may differ from the model's on purpose (the fault being looked for)
        cross_check=None if kind is None else oracle_evaluator(model, CROSS_CHECKS[kind])[1],
    )
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
                result.compared.append(comparison)
                result.checked_values += 1
                diff = comparison.max_abs_diff
                agree[out] = (comparison.passed, float("inf") if diff is None else diff)
                if comparison.passed or not inputs_ok or result.first is not None or result.disputed:
                    continue
                divergence = Divergence(
                    node_label(proto, index),
                    node.op_type,
                    [i for i in node.input if i],
                    out,
                    comparison,
                    input_diff,
                    node_source(node),
                )
                if kind is None or _trusted(
                    result, proto, index, kind, expected, feeds, pairs[out], tolerance
                ):
                    result.first = divergence
                else:
                    result.disputed.append(
                        {
                            "node": divergence.node,
                            "op_type": divergence.op_type,
                            "output": out,
                            "oracle": description,
                            "output_max_abs_diff": diff,
                            "cross_check": result.cross_check,
                        }
                    )
        if result.first is not None or result.disputed:
            break
    return result


def _trusted(
    result: Localization,
    proto: Any,
    index: int,
    oracle: str,
    expected: Evaluator,
    feeds: Mapping[str, np.ndarray],
    pair: tuple[np.ndarray, np.ndarray],
    tolerance: Tolerance | None,
) -> bool:
    """Whether the cross-check lets the oracle name node ``index``; notes when it could not tell."""
    node = proto.graph.node[index]
    initializers = {t.name for t in proto.graph.initializer}
    wanted = [i for i in dict.fromkeys(node.input) if i and i not in initializers and i not in feeds]
    inputs = {name: np.asarray(feeds[name]) for name in node.input if name in feeds}
    inputs.update(zip(wanted, expected(wanted, feeds), strict=True) if wanted else {})
    check = cross_check_node(proto, index, oracle, inputs, pair[0], pair[1], tolerance)
    if check.verdict == "unavailable":
        result.notes.append(
            f"node {node_label(proto, index)!r} not cross-checked by {check.by}: {check.detail}"
        )
    return check.verdict != "disputed"


def _produced(proto: Any) -> list[str]:
    return list(dict.fromkeys(out for node in proto.graph.node for out in node.output if out))


def _op_counts(proto: Any, values: set[str]) -> dict[str, int]:
    """How many of ``values`` each op type produces."""
    counts = Counter(node.op_type for node in proto.graph.node for out in node.output if out in values)
    return dict(counts.most_common())


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
    produced = _produced(model.proto)
    result = Localization(oracle=f"{frontend.name} layers", values_total=len(produced), paired_values=0)
    if not isinstance(frontend, LayerPairing):
        result.unpaired = _op_counts(model.proto, set(produced))
        result.notes.append(f"the {frontend.name} front end cannot pair its layers with ONNX values")
        return result
    paired = frontend.layer_outputs(native, model.proto, feeds)
    layers = [p for p in paired if p.onnx_value in value_names(model.proto)]
    if len(layers) < len(paired):
        result.notes.append(f"{len(paired) - len(layers)} paired layer(s) name values the model lacks")
    owned = {p.onnx_value for p in layers} & set(produced)
    result.paired_values = len(owned)
    result.unpaired = _op_counts(model.proto, set(produced) - owned)
    producer = {out: (i, node) for i, node in enumerate(model.proto.graph.node) for out in node.output}
    actual = onnxruntime_evaluator(model.proto)
    for start in range(0, len(layers), chunk):
        group = layers[start : start + chunk]
        values = actual([p.onnx_value for p in group], feeds)
        for pair, got in zip(group, values, strict=True):
            comparison = compare_arrays(pair.onnx_value, pair.value, got, tolerance)
            result.compared.append(comparison)
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
