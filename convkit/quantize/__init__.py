"""``convkit quantize``: static QDQ int8, dynamic int8 and fp16 — each gated by a check against fp32.

A quantized model that loses parity (top-1 agreement below the bar for a classifier, an error bound for every
model: see ``convkit.quantize.gate``) is not written unless the user forces it; the report says what was lost
either way, and whether the result is smaller and faster than fp32.
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.artifacts import atomic_path, load_arrays
from convkit.core.runtime import RuntimeSession, SessionOptions
from convkit.errors import ConvkitError, DataError, FrameworkUnavailableError
from convkit.frontends._quiet import Quiet
from convkit.graph.model import OnnxModel, load_onnx
from convkit.graph.rewrites import flatten_channels_last, pool_before_activation
from convkit.progress import step
from convkit.quantize.dynamic import prepare_dynamic, quantize_dynamic_int8
from convkit.quantize.gate import (
    DEFAULT_MAX_REL_ERROR,
    DEFAULT_MIN_TOP1,
    Cached,
    Check,
    ErrorStats,
    Gate,
    evaluate,
)
from convkit.quantize.sensitive import keep_float32

__all__ = [
    "DEFAULT_MAX_REL_ERROR",
    "DEFAULT_MIN_TOP1",
    "MODES",
    "Gate",
    "QuantizeReport",
    "float32_chains",
    "quantize_model",
    "shallow_convs",
]

MODES = ("static", "dynamic", "fp16")
# NOTE: why 5 %: side-by-side timings on a shared machine move by a few percent; a smaller gain is not
# evidence of one
FASTER_BY = 1.05


@dataclass
class QuantizeReport:
    """How the quantized model compares with fp32 on the evaluation data."""

    mode: str
    samples: int
    top1_agreement: float | None
    max_abs_diff: float
    mean_abs_diff: float
    rel_error: float
    cosine: float
    per_channel: bool | None
    written: bool
    output: str
    min_top1: float
    fp32_bytes: int
    quantized_bytes: int
    notes: list[str] = field(default_factory=list)
    fp32_ms: float | None = None
    quantized_ms: float | None = None
    """Median latency of each model on one evaluation batch, timed side by side in this process."""
    checks: list[Check] = field(default_factory=list)
    """The bars this model was held to (``Gate.checks``), each with its value."""

    @property
    def speedup(self) -> float | None:
        """How many times faster the quantized model runs than fp32 (below 1: slower)."""
        if not self.fp32_ms or not self.quantized_ms:
            return None
        return self.fp32_ms / self.quantized_ms

    @property
    def faster(self) -> bool | None:
        """Whether the quantized model ran at least ``FASTER_BY`` times faster (``None``: not timed)."""
        return None if self.speedup is None else self.speedup >= FASTER_BY

    @property
    def larger(self) -> bool:
        return self.quantized_bytes >= self.fp32_bytes

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "checks": [check.to_dict() for check in self.checks],
            "passed": self.passed,
            "speedup": self.speedup,
            "faster": self.faster,
            "larger": self.larger,
        }

    @classmethod
    def from_stats(cls, mode: str, stats: ErrorStats, gate: Gate, **fields: Any) -> QuantizeReport:
        return cls(
            mode=mode,
            samples=stats.samples,
            top1_agreement=stats.top1_agreement,
            max_abs_diff=stats.max_abs_diff,
            mean_abs_diff=stats.mean_abs_diff,
            rel_error=stats.rel_error,
            cosine=stats.cosine,
            min_top1=gate.min_top1,
            checks=gate.checks(stats),
            **fields,
        )


def _checked_data(
    session: RuntimeSession, path: str | os.PathLike[str], option: str
) -> dict[str, np.ndarray]:
    """The arrays in ``path``, checked against the model's inputs (names, dtypes, shapes).

    NOTE: why before quantizing: onnxruntime's calibrator and quantizer meet a wrong key or shape deep
    inside, as a bare ValueError; here the message names the file and the hint what the model takes.
    """
    arrays = load_arrays(path, session.model.input_names)
    try:
        session.check_feeds(arrays)
    except DataError as exc:
        raise DataError(f"{option} {path}: {exc.message}", exc.hint) from None
    return arrays


def _split(arrays: Mapping[str, np.ndarray], chunk: int) -> list[dict[str, np.ndarray]]:
    sizes = {np.shape(v)[0] for v in arrays.values() if np.ndim(v)}
    if len(sizes) != 1:
        raise DataError("calibration inputs must share their first (batch) dimension")
    total = sizes.pop()
    if total == 0:
        raise DataError("the calibration / evaluation data holds no samples (its batch dimension is 0)")
    return [{k: v[i : i + chunk] for k, v in arrays.items()} for i in range(0, total, chunk)]


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of feeds."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = batches
        self._iter: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def _has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


# NOTE: why: int8 GEMMs pay off only with enough depth to amortise quantizing the input. Measured on the
# reference CNN (AVX-512 VNNI, batch 64): conv1 (1 input channel, 3x3: depth 9) took 1.16 ms in int8 against
# 0.23 ms in fp32, conv2 (depth 288) 0.32 ms against 0.98 ms.
SHALLOW_CONV_DEPTH = 64


# Element-wise and pooling ops that follow a float32 Conv stay in float32 with it (see float32_chains).
_FOLLOWERS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "MaxPool", "AveragePool"}


def shallow_convs(model: Any) -> list[str]:
    """Names of the Conv nodes whose reduction depth (input channels per group x kernel size) is below
    ``SHALLOW_CONV_DEPTH``: int8 is slower than float32 for them."""
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        dims = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if node.name and dims is not None and len(dims) >= 3 and int(np.prod(dims[1:])) < SHALLOW_CONV_DEPTH:
            names.append(node.name)
    return names


def float32_chains(model: Any, convs: list[str]) -> list[str]:
    """``convs`` with the activation and pooling chain right after each, all to stay in float32.

    NOTE: why the chain: quantizing right after the Conv split it from its Relu and MaxPool, which then lost
    onnxruntime's blocked-layout (NCHWc) fusion.
    """
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names = []
    for node in model.graph.node:
        if node.name not in convs:
            continue
        names.append(node.name)
        follower = node
        while len(nexts := consumers.get(follower.output[0], [])) == 1 and nexts[0].op_type in _FOLLOWERS:
            follower = nexts[0]
            if follower.name:
                names.append(follower.name)
    return names


def _static(
    model: OnnxModel, batches: list[dict[str, np.ndarray]], out: Path, per_channel: bool
) -> list[str]:
    """Quantize to QDQ int8; returns the notes (what stayed in float32)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # NOTE: why pre-process: onnxruntime's recommended step (shape inference and graph fusions first) lets
    # more nodes be quantized and fewer Q/DQ pairs remain.
    prepared = out.with_suffix(".prepared.onnx")
    try:
        quant_pre_process(str(model.path), str(prepared))
    except Exception:
        prepared = model.path
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(prepared)))
    convs = shallow_convs(proto)
    # NOTE: why both rewrites here and not in the fp32 model: they keep the function exactly and change
    # nothing measurable in float32; they only decide where onnxruntime's int8 kernels start and stop.
    if pool_before_activation(proto, set(convs)) + flatten_channels_last(proto):
        prepared = out.with_suffix(".rewritten.onnx")
        onnx.save(proto, str(prepared))
    excluded = float32_chains(proto, convs)

    arm = platform.machine().lower() in ("aarch64", "arm64")
    # NOTE: why these types: onnxruntime's guidance for CPU inference — U8 activations and S8 weights on
    # x86 (7-bit weights where the CPU lacks VNNI, to avoid saturating the 16-bit intermediate sums),
    # symmetric S8/S8 on ARM.
    quantize_static(
        str(prepared),
        str(out),
        _Reader(batches),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        reduce_range=not arm and not _has_vnni(),
        activation_type=QuantType.QInt8 if arm else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
    )
    if not excluded:
        return []
    return [
        f"kept {len(excluded)} node(s) in float32: shallow Conv (depth below {SHALLOW_CONV_DEPTH}, faster "
        f"than int8) and the activations and pooling after it: {', '.join(excluded[:6])}"
    ]


@dataclass
class _Candidate:
    """One quantized model, checked: its report, session, file and the values ``observe`` is to see."""

    report: QuantizeReport
    session: RuntimeSession
    path: Path
    seen: dict[str, list[tuple[np.ndarray, np.ndarray]]]

    @property
    def passed(self) -> bool:
        return self.report.passed


def _fp16(model: OnnxModel, out: Path) -> None:
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise FrameworkUnavailableError(
            "fp16 conversion needs onnxconverter-common", "pip install 'convkit[quantize]'"
        ) from exc
    with warnings.catch_warnings():  # one "will be truncated" warning per tiny weight
        warnings.simplefilter("ignore")
        converted = float16.convert_float_to_float16(onnx.load(str(model.path)), keep_io_types=True)
    onnx.save(converted, str(out))


def _time_side_by_side(
    fp32: RuntimeSession, candidate: RuntimeSession, feeds: Mapping[str, np.ndarray], seconds: float
) -> tuple[float, float]:
    """Median milliseconds of fp32 and the candidate on ``feeds``, interleaved (``convkit.perf.bench``)."""
    import statistics

    from convkit.perf.bench import interleave

    times = interleave({"fp32": fp32.bind(feeds), "quantized": candidate.bind(feeds)}, min_seconds=seconds)
    return statistics.median(times["fp32"]) * 1e3, statistics.median(times["quantized"]) * 1e3


def _no_gain_note(report: QuantizeReport, batch: int) -> str:
    """What the quantized model does not gain over fp32 here: speed, size or both."""
    lost = []
    if report.faster is False and report.speedup is not None:
        lost.append(f"is not faster than fp32 here ({report.speedup:.2f}x at batch {batch})")
    if report.larger:
        lost.append(f"is not smaller ({report.fp32_bytes:,} -> {report.quantized_bytes:,} bytes)")
    gains = "saves memory, not time" if not report.larger else "saves neither memory nor time"
    if report.faster is not False:
        gains = "saves no memory"
    return f"the {report.mode} model " + " and ".join(lost) + f": it {gains}"


def quantize_model(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    mode: str = "static",
    calibration: str | os.PathLike[str] | None = None,
    evaluation: str | os.PathLike[str] | None = None,
    per_channel: str = "auto",
    min_top1: float = DEFAULT_MIN_TOP1,
    force: bool = False,
    batch: int = 16,
    time_seconds: float = 0.5,
    *,
    max_abs_diff: float | None = None,
    max_rel_error: float | None = None,
    min_cosine: float | None = None,
    observe: Callable[[str, np.ndarray, np.ndarray], None] | None = None,
    search_float32: bool = True,
) -> QuantizeReport:
    """Quantize ``path`` and write ``output`` only when it holds parity with fp32 (or ``force``).

    Parity: top-1 agreement of at least ``min_top1`` for a classifier; a relative error of at most
    ``max_rel_error`` (default ``DEFAULT_MAX_REL_ERROR`` for models that are not classifiers); and, when
    given, ``max_abs_diff`` and ``min_cosine`` for every model.

    Args:
        mode: ``static`` (QDQ int8, needs ``calibration``), ``dynamic`` (int8 weights) or ``fp16``.
        calibration: calibration inputs (``.npz`` whose arrays share a batch dimension, or a data set folder).
        evaluation: held-out inputs for the check; the calibration data when omitted.
        per_channel: ``on``, ``off``, or ``auto`` (per-tensor first, per-channel when that fails the bar).
        time_seconds: how long to time fp32 against the result on one evaluation batch (0: not timed).
        max_abs_diff: the largest absolute difference allowed in any output value.
        max_rel_error: the largest ``||quantized - fp32|| / ||fp32||`` allowed (every model when given).
        min_cosine: the smallest cosine similarity allowed between the outputs.
        observe: called once per output with the fp32 and quantized values over the whole evaluation set,
            for the candidate the report describes (the HTML report's error plots).
        search_float32: when dynamic int8 fails the bar with every ``per_channel`` choice, keep its most
            sensitive weighted nodes (MatMul, Gemm, Conv) in float32, the fewest that pass the bar on the
            evaluation data (``convkit.quantize.sensitive``); the report's notes name them.

    Returns:
        The report; ``report.written`` says whether ``output`` was written (never when it failed a bar,
        unless ``force``).
    """
    if mode not in MODES:
        raise ConvkitError(f"unknown quantization mode {mode!r}", f"choose one of {', '.join(MODES)}")
    model = load_onnx(path)
    output = Path(output)
    if mode == "static" and calibration is None:
        raise DataError("static quantization needs calibration data", "pass --calibration INPUTS.npz")
    data_path = evaluation or calibration
    if data_path is None:
        raise DataError(
            f"{mode} quantization is checked on data", "pass --calibration or --eval-data INPUTS.npz"
        )
    fp32 = RuntimeSession(model, SessionOptions(provider="cpu"))
    option = "--eval-data" if evaluation is not None else "--calibration"
    eval_batches = _split(_checked_data(fp32, data_path, option), batch)
    calib_batches = _split(_checked_data(fp32, calibration, "--calibration"), batch) if calibration else []
    choices = {"on": [True], "off": [False], "auto": [False, True]}[per_channel]
    gate = Gate(min_top1, max_abs_diff, max_rel_error, min_cosine)
    samples = sum(len(next(iter(b.values()))) for b in eval_batches)
    reference = Cached(fp32)
    with tempfile.TemporaryDirectory() as scratch, Quiet():
        prepared = prepare_dynamic(model.path, Path(scratch)) if mode == "dynamic" else None

        def attempt(channelwise: bool | None, keep: list[str] | None = None) -> _Candidate:
            path = Path(tempfile.mkdtemp(dir=scratch)) / "candidate.onnx"
            notes = list(prepared.notes) if prepared else []
            if mode == "static":
                notes = _static(model, calib_batches, path, bool(channelwise))
            elif prepared is not None:
                quantize_dynamic_int8(prepared.source(keep), path, bool(channelwise), keep)
            else:
                _fp16(model, path)
            session = RuntimeSession(load_onnx(path), SessionOptions(provider="cpu"))
            step(f"checking the {mode} model against fp32 on {len(eval_batches)} batch(es)")
            seen: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
            record = None if observe is None else lambda name, a, b: seen.setdefault(name, []).append((a, b))
            report = QuantizeReport.from_stats(
                mode,
                evaluate(reference, session, eval_batches, samples, record),
                gate,
                per_channel=channelwise,
                written=False,
                output=str(output),
                fp32_bytes=model.path.stat().st_size,
                quantized_bytes=path.stat().st_size,
                notes=notes,
            )
            return _Candidate(report, session, path, seen)

        for channelwise in choices if mode != "fp16" else [None]:
            scheme = "" if channelwise is None else (", per-channel" if channelwise else ", per-tensor")
            step(f"quantizing ({mode}{scheme})")
            found = attempt(channelwise)
            if found.report.passed:
                break
        if prepared is not None and search_float32 and not found.report.passed:
            searched = keep_float32(
                prepared.proto,
                eval_batches[0],
                bool(found.report.per_channel),
                Path(scratch),
                lambda emulator: gate.passes(evaluate(reference, emulator, eval_batches, samples)),
                functools.partial(attempt, found.report.per_channel),
            )
            found = searched.result or found
            found.report.notes.append(searched.note)
        report = found.report
        if observe is not None:
            for name, pairs in found.seen.items():
                fp32_values = np.concatenate([np.atleast_1d(a) for a, _ in pairs])
                observe(name, fp32_values, np.concatenate([np.atleast_1d(b) for _, b in pairs]))
        if time_seconds > 0:
            step(f"timing fp32 against {mode}")
            report.fp32_ms, report.quantized_ms = _time_side_by_side(
                fp32, found.session, eval_batches[0], time_seconds
            )
        if report.faster is False or report.larger:
            report.notes.append(_no_gain_note(report, len(next(iter(eval_batches[0].values())))))
        if evaluation is None:
            report.notes.append("checked on the calibration data itself; pass --eval-data for a held-out set")
        if report.passed or force:
            with atomic_path(output, suffix=".onnx") as tmp:
                tmp.write_bytes(found.path.read_bytes())
            report.written = True
            if not report.passed:
                report.notes.append("written despite failing the parity bar (--force)")
    return report
