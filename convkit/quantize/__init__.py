"""``convkit quantize``: static QDQ int8, dynamic int8 and fp16 — each gated by a check against fp32.

A quantized model that loses parity (top-1 agreement below the bar) is not written unless the user forces
it; the report says what was lost either way.
"""

from __future__ import annotations

import os
import platform
import tempfile
import warnings
from collections.abc import Iterator, Mapping
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

MODES = ("static", "dynamic", "fp16")
DEFAULT_MIN_TOP1 = 0.99


@dataclass
class QuantizeReport:
    """How the quantized model compares with fp32 on the evaluation data."""

    mode: str
    samples: int
    top1_agreement: float | None
    max_abs_diff: float
    mean_abs_diff: float
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

    @property
    def speedup(self) -> float | None:
        """How many times faster the quantized model runs than fp32 (below 1: slower)."""
        if not self.fp32_ms or not self.quantized_ms:
            return None
        return self.fp32_ms / self.quantized_ms

    @property
    def passed(self) -> bool:
        return self.top1_agreement is None or self.top1_agreement >= self.min_top1

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "passed": self.passed, "speedup": self.speedup}


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


def _dynamic(model: OnnxModel, out: Path, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(model.path), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)


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


def _evaluate(
    fp32: RuntimeSession, candidate: RuntimeSession, batches: list[dict[str, np.ndarray]]
) -> tuple[float | None, float, float, int]:
    """Top-1 agreement of the first output (when it is a float score tensor) and the differences."""
    agree = seen = 0
    max_diff = 0.0
    sum_diff = 0.0
    count = 0
    classify = True
    for feeds in batches:
        ref = next(iter(fp32.run(feeds).values()))
        got = next(iter(candidate.run(feeds).values())).astype(ref.dtype)
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        max_diff = max(max_diff, float(diff.max()) if diff.size else 0.0)
        sum_diff += float(diff.sum())
        count += diff.size
        if ref.ndim >= 2 and ref.dtype.kind == "f" and ref.shape[-1] > 1:
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
            seen += int(np.prod(ref.shape[:-1]))
        else:
            classify = False
    top1 = agree / seen if classify and seen else None
    return top1, max_diff, sum_diff / max(count, 1), sum(len(next(iter(b.values()))) for b in batches)


def _time_side_by_side(
    fp32: RuntimeSession, candidate: RuntimeSession, feeds: Mapping[str, np.ndarray], seconds: float
) -> tuple[float, float]:
    """Median milliseconds of fp32 and the candidate on ``feeds``, interleaved (``convkit.perf.bench``)."""
    import statistics

    from convkit.perf.bench import interleave

    times = interleave({"fp32": fp32.bind(feeds), "quantized": candidate.bind(feeds)}, min_seconds=seconds)
    return statistics.median(times["fp32"]) * 1e3, statistics.median(times["quantized"]) * 1e3


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
) -> QuantizeReport:
    """Quantize ``path`` and write ``output`` only when top-1 agreement with fp32 holds (or ``force``).

    Args:
        mode: ``static`` (QDQ int8, needs ``calibration``), ``dynamic`` (int8 weights) or ``fp16``.
        calibration: calibration inputs (``.npz`` whose arrays share a batch dimension, or a data set folder).
        evaluation: held-out inputs for the check; the calibration data when omitted.
        per_channel: ``on``, ``off``, or ``auto`` (per-tensor first, per-channel when that fails the bar).
        time_seconds: how long to time fp32 against the result on one evaluation batch (0: not timed).
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
    report: QuantizeReport | None = None
    with tempfile.TemporaryDirectory() as scratch, Quiet():
        for channelwise in choices if mode != "fp16" else [None]:
            candidate_path = Path(scratch) / f"candidate_{channelwise}.onnx"
            notes: list[str] = []
            if mode == "static":
                notes = _static(model, calib_batches, candidate_path, bool(channelwise))
            elif mode == "dynamic":
                _dynamic(model, candidate_path, bool(channelwise))
            else:
                _fp16(model, candidate_path)
            candidate = RuntimeSession(load_onnx(candidate_path), SessionOptions(provider="cpu"))
            top1, max_diff, mean_diff, samples = _evaluate(fp32, candidate, eval_batches)
            report = QuantizeReport(
                mode=mode,
                samples=samples,
                top1_agreement=top1,
                max_abs_diff=max_diff,
                mean_abs_diff=mean_diff,
                per_channel=channelwise,
                written=False,
                output=str(output),
                min_top1=min_top1,
                fp32_bytes=model.path.stat().st_size,
                quantized_bytes=candidate_path.stat().st_size,
                notes=notes,
            )
            if report.passed:
                break
        assert report is not None
        if time_seconds > 0:
            report.fp32_ms, report.quantized_ms = _time_side_by_side(
                fp32, candidate, eval_batches[0], time_seconds
            )
            if report.speedup is not None and report.speedup < 1:
                report.notes.append(
                    f"the {mode} model runs slower than fp32 here ({report.speedup:.2f}x at batch "
                    f"{len(next(iter(eval_batches[0].values())))}); it saves memory, not time"
                )
        if evaluation is None:
            report.notes.append("checked on the calibration data itself; pass --eval-data for a held-out set")
        if report.passed or force:
            with atomic_path(output, suffix=".onnx") as tmp:
                tmp.write_bytes(candidate_path.read_bytes())
            report.written = True
            if not report.passed:
                report.notes.append("written despite failing the parity bar (--force)")
    return report
