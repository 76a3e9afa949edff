"""Which weighted nodes stay in float32 when int8 everywhere loses parity: a sensitivity pass, then a search.

One emulation of the int8 model (``Emulator``) lets any set of weighted nodes run in int8 (its weight rounded
to int8 and its input through ``DynamicQuantizeLinear``, as onnxruntime's dynamic int8 computes) and the rest
in float32, chosen per run. The pass makes one node at a time int8 and measures how far the outputs move from
fp32 on a few evaluation samples; the search keeps the most sensitive nodes in float32, as few as the gate
allows on the emulation (``fewest_float32``), and then checks the real int8 model, quantized by onnxruntime,
keeping more nodes in float32 if that one fails.

NOTE: why one node at a time and not each node's own error: the same int8 rounding moved GPT-2's logits
4x more in its first block than in its last (relative error 0.011-0.016 against 0.003), since the error
grows through every layer after it.
NOTE: why an emulation: one onnxruntime session serves every step. With onnxruntime quantizing and loading
each candidate, ViT-B/16's quantize took 13 minutes on 2 vCPUs, 7.5 with the emulation; the emulation's
relative errors match onnxruntime's int8 to three digits (GPT-2 small: 0.01488, 0.01260, 0.00143 both).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from convkit.progress import step

# NOTE: why a few samples: the ranking needs each node's relative size only; GPT-2's four samples give
# 512 positions of 50257 logits each
SENSITIVITY_SAMPLES = 4
WEIGHTED_OPS = ("MatMul", "Gemm", "Conv")
_FLOAT = 1  # onnx.TensorProto.FLOAT


class Checked(Protocol):
    """A quantized model, checked against fp32."""

    @property
    def passed(self) -> bool: ...


T = TypeVar("T", bound=Checked)


def fold_transposed_weights(model: Any) -> list[str]:
    """Replace each ``Transpose`` of an initializer that feeds a MatMul by the transposed initializer;
    returns the names of the MatMuls that now read a folded weight.

    NOTE: why: a head tied to the embedding (GPT-2's lm_head) reads ``Transpose(wte)``, and onnxruntime
    quantizes a MatMul only when its weight is an initializer.
    """
    from onnx import numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    matmuls = {node.input[1]: node.name for node in model.graph.node if node.op_type == "MatMul"}
    kept, readers = [], []
    for node in model.graph.node:
        if node.op_type == "Transpose" and node.input[0] in initializers and node.output[0] in matmuls:
            weight = numpy_helper.to_array(initializers[node.input[0]])
            perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
            transposed = np.ascontiguousarray(weight.transpose(perm[0]) if perm else weight.T)
            model.graph.initializer.append(numpy_helper.from_array(transposed, node.output[0]))
            readers.append(matmuls[node.output[0]])
        else:
            kept.append(node)
    if readers:
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return readers


def weighted_nodes(model: Any) -> list[str]:
    """Names of the nodes int8 would quantize with a constant weight: MatMul, Gemm, Conv whose second input
    is a float32 initializer."""
    initializers = {t.name for t in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in WEIGHTED_OPS
        and node.name
        and len(node.input) > 1
        and node.input[1] in initializers
    ]


def quantizer_names(model: Any, names: Sequence[str]) -> list[str]:
    """``names`` as onnxruntime's dynamic quantizer knows them: it turns each Gemm into ``NAME_MatMul``."""
    ops = {node.name: node.op_type for node in model.graph.node}
    return [f"{name}_MatMul" if ops.get(name) == "Gemm" else name for name in names]


def _fake_int8(weight: np.ndarray, axis: int | None) -> np.ndarray:
    """``weight`` rounded to symmetric int8 and back: one scale per slice along ``axis`` (None: one)."""
    w = weight.astype(np.float64)
    reduce = None if axis is None else tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    scale = np.abs(w).max(axis=reduce, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.round(w / scale), -127, 127) * scale).astype(weight.dtype)


def _channel_axis(node: Any) -> int:
    """The weight's output-channel axis: MatMul ``[K, N]``: last; Gemm: by ``transB``; Conv: 0."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = [a.i for a in node.attribute if a.name == "transB"]
        return 0 if trans_b and trans_b[0] else 1
    return -1


def _relative_error(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    diff = sum(
        float(np.sum((np.asarray(b, np.float64) - a) ** 2)) for a, b in zip(expected, actual, strict=True)
    )
    norm = sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in expected)
    return float(np.sqrt(diff / norm)) if norm else (0.0 if diff == 0 else float("inf"))


class Emulator:
    """``model`` with each node in ``names`` switchable to int8 per run: ``int8`` names those that are.

    ``run(feeds)`` returns the outputs by name, as ``RuntimeSession.run`` does (``convkit.quantize.gate``
    evaluates it as it does a quantized model). Written to ``folder`` (weights as external data: the
    emulation holds each weight twice and may pass protobuf's 2 GB); ``model`` is left as it was.
    """

    def __init__(
        self, model: Any, names: Sequence[str], per_channel: bool, folder: Path, threads: int | None = None
    ) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import helper, numpy_helper

        emulated = onnx.ModelProto()
        emulated.CopyFrom(model)
        initializers = {t.name: t for t in emulated.graph.initializer}
        nodes = {node.name: node for node in emulated.graph.node}
        for name in names:
            node = nodes[name]
            source, weight = node.input[0], node.input[1]
            value = numpy_helper.to_array(initializers[weight])
            axis = _channel_axis(node) if per_channel else None
            emulated.graph.initializer.append(numpy_helper.from_array(_fake_int8(value, axis), f"{name}__w8"))
            emulated.graph.input.append(
                helper.make_tensor_value_info(f"{name}__int8", onnx.TensorProto.BOOL, [])
            )
            q = [f"{name}__q", f"{name}__scale", f"{name}__zero"]
            # NOTE: why appended at the end: onnxruntime sorts the graph itself
            emulated.graph.node.extend(
                [
                    helper.make_node("DynamicQuantizeLinear", [source], q, f"{name}__dql"),
                    helper.make_node("DequantizeLinear", q, [f"{name}__x8"], f"{name}__dq"),
                    helper.make_node("Where", [f"{name}__int8", f"{name}__x8", source], [f"{name}__x"]),
                    helper.make_node("Where", [f"{name}__int8", f"{name}__w8", weight], [f"{name}__w"]),
                ]
            )
            node.input[0], node.input[1] = f"{name}__x", f"{name}__w"
        path = folder / "emulated.onnx"
        onnx.save_model(emulated, str(path), save_as_external_data=True, location=f"{path.name}.data")
        del emulated
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.names = list(names)
        self.int8: set[str] = set()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        switches = {f"{name}__int8": np.array(name in self.int8) for name in self.names}
        return dict(zip(self._outputs, self._session.run(None, {**feeds, **switches}), strict=True))

    def sensitivities(self, feeds: Mapping[str, np.ndarray]) -> dict[str, float]:
        """For each node: the relative error of every output on ``feeds`` when only that node is int8."""
        self.int8 = set()
        expected = list(self.run(feeds).values())
        found = {}
        for name in self.names:
            self.int8 = {name}
            found[name] = _relative_error(expected, list(self.run(feeds).values()))
        self.int8 = set()
        return found


def fewest_float32(ranked: Sequence[str], passes: Callable[[list[str]], bool], low: int = 0) -> int | None:
    """How many of ``ranked`` (most sensitive first), at fewest and more than ``low``, must stay float32 for
    ``passes(kept)`` to hold; ``None`` when no number short of all of them does.

    Bisection, assuming that keeping more in float32 never hurts: ``low`` is known to fail, all of them
    (nothing int8) is never tried.
    """
    high, found = len(ranked), None
    while high - low > 1:
        middle = (low + high) // 2
        if passes(list(ranked[:middle])):
            high = found = middle
        else:
            low = middle
    return found


def _emulated_search(
    model: Any,
    names: list[str],
    batch: Mapping[str, np.ndarray],
    per_channel: bool,
    folder: Path,
    passes: Callable[[Emulator], bool],
) -> tuple[dict[str, float], list[str], int | None]:
    """Each node's sensitivity, the nodes most sensitive first, and the head ``fewest_float32`` finds on the
    emulation (the emulator's session is let go on return)."""
    step(f"emulating int8 on each of {len(names)} weighted node(s) alone")
    emulator = Emulator(model, names, per_channel, folder)
    scores = emulator.sensitivities({k: v[:SENSITIVITY_SAMPLES] for k, v in batch.items()})
    ranked = sorted(names, key=scores.__getitem__, reverse=True)

    def emulated(head: list[str]) -> bool:
        step(f"checking the emulated int8 model, the {len(head)} most sensitive node(s) in float32")
        emulator.int8 = set(names) - set(head)
        return passes(emulator)

    return scores, ranked, fewest_float32(ranked, emulated)


@dataclass
class Search(Generic[T]):
    """What ``keep_float32`` found: the nodes kept in float32 and the passing attempt's result (``None``
    when none passed), each node's sensitivity, and the report's note."""

    kept: list[str]
    result: T | None
    scores: dict[str, float]
    note: str


def keep_float32(
    model: Any,
    batch: Mapping[str, np.ndarray],
    per_channel: bool,
    folder: Path,
    passes: Callable[[Emulator], bool],
    attempt: Callable[[list[str]], T],
) -> Search[T]:
    """Rank ``model``'s weighted nodes by sensitivity on the first ``SENSITIVITY_SAMPLES`` of ``batch``,
    find on the emulation the fewest most sensitive ones to keep in float32 (``passes(emulator)``: the gate
    on the emulated outputs), then check them for real: ``attempt(keep)`` quantizes everything but the nodes
    named in ``keep`` (each name also as onnxruntime's quantizer knows it) and checks the result. When that
    fails, the bisection goes on with real attempts, keeping more."""
    names = weighted_nodes(model)
    if len(names) < 2:
        return Search(
            [], None, {}, f"no int8 model held the bar: the model has {len(names)} weighted node(s)"
        )
    scores, ranked, guess = _emulated_search(model, names, batch, per_channel, folder, passes)

    tried: dict[int, T] = {}

    def real(head: list[str]) -> bool:
        step(f"quantizing again, the {len(head)} most sensitive node(s) in float32")
        tried[len(head)] = attempt(head + [n for n in quantizer_names(model, head) if n not in head])
        return tried[len(head)].passed

    count = guess if guess is None or real(ranked[:guess]) else fewest_float32(ranked, real, low=guess)
    if count is None:
        return Search(
            [],
            None,
            scores,
            f"no int8 model held the bar short of keeping all {len(names)} weighted node(s) in float32: int8 "
            f"on the least sensitive ({ranked[-1]}) alone moved the outputs by {scores[ranked[-1]]:.3g} "
            "relative error",
        )
    kept, result = ranked[:count], tried[count]
    shown = ", ".join(kept[:6]) + (f" and {len(kept) - 6} more" if len(kept) > 6 else "")
    return Search(
        kept,
        result,
        scores,
        f"kept {len(kept)} of {len(names)} weighted node(s) in float32, those whose int8 moved the outputs "
        f"most (each alone: {scores[kept[-1]]:.3g} to {scores[kept[0]]:.3g} relative error; the int8 rest "
        f"at most {scores[ranked[len(kept)]]:.3g}): {shown}",
    )
