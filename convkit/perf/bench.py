"""``convkit bench``: onnxruntime against the native framework, interleaved in one process.

Each round runs every contender for a short block of calls, in a rotating order, so a burst of load from
elsewhere on the machine hits all of them alike; medians and percentiles come from the per-call times.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convkit.core.runtime import RuntimeSession, SessionOptions
from convkit.graph.flops import count_flops
from convkit.graph.model import OnnxModel
from convkit.perf.peak import PeakEstimate
from convkit.progress import detail, step

Runner = Callable[[], Any]
# NOTE: why 1.5: a steady run on an idle machine keeps p90 within about 1.2x of the median (the README's
# table); beyond 1.5x the medians are at the mercy of whatever else ran, and the report says so
WIDE_SPREAD = 1.5


@dataclass
class Timing:
    """One contender at one batch size."""

    contender: str
    batch: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    p99_ms: float
    calls: int
    samples_per_s: float
    gflops: float | None = None
    peak_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BenchReport:
    """Every contender's timings, and what they were measured on (provider, versions, CPU, time)."""

    model: str
    threads: int
    flops_per_sample: int
    peak: PeakEstimate | None
    timings: list[Timing] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    provider: str = "cpu"
    onnxruntime: str = ""
    cpu_model: str = ""
    timestamp: str = ""
    """When the run started, ISO 8601 in UTC."""
    warmup: int = 5
    min_calls: int = 20

    def ratio(self, batch: int, numerator: str, denominator: str) -> float | None:
        """How many times faster ``numerator`` is than ``denominator`` (median latency), at ``batch``."""
        by_name = {t.contender: t for t in self.timings if t.batch == batch}
        if numerator not in by_name or denominator not in by_name:
            return None
        return by_name[denominator].median_ms / by_name[numerator].median_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "threads": self.threads,
            "provider": self.provider,
            "onnxruntime": self.onnxruntime,
            "cpu_model": self.cpu_model,
            "timestamp": self.timestamp,
            "warmup": self.warmup,
            "min_calls": self.min_calls,
            "flops_per_sample": self.flops_per_sample,
            "peak": None if self.peak is None else dict(self.peak.__dict__),
            "timings": [t.to_dict() for t in self.timings],
            "notes": self.notes,
            "warnings": self.warnings,
        }


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def interleave(
    runners: Mapping[str, Runner],
    warmup: int = 5,
    min_calls: int = 20,
    min_seconds: float = 1.0,
    max_calls: int = 2000,
    progress: Callable[[int], None] | None = None,
    block_seconds: float = 0.05,
) -> dict[str, list[float]]:
    """Time every runner in rounds: each round gives each runner, in rotating order, a short block of
    calls (``block_seconds``, at least one call) after one untimed call.

    Stops when each runner has at least ``min_calls`` timed calls and ``min_seconds`` have passed, or after
    ``max_calls`` rounds. Returns per-call seconds.

    NOTE: why blocks, and the untimed call at each switch: runtimes keep their worker threads spinning for
    a while after a call (onnxruntime, OpenMP in PyTorch, Eigen in TensorFlow); measured here, strictly
    alternating single calls made torch eager 2.3x slower at batch 64 behind a spinning onnxruntime. Blocks
    a few dozen milliseconds long still spread a burst of load from elsewhere over every contender.
    """
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_calls:
        order = names[rounds % len(names) :] + names[: rounds % len(names)]
        for name in order:
            run, recorded = runners[name], times[name]
            run()
            block_end = time.perf_counter() + block_seconds
            while True:
                t0 = time.perf_counter()
                run()
                t1 = time.perf_counter()
                recorded.append(t1 - t0)
                if t1 >= block_end:
                    break
        rounds += 1
        if progress:
            progress(1)
        enough = min(len(v) for v in times.values()) >= min_calls
        if enough and time.perf_counter() - start >= min_seconds:
            break
    return times


def summarize(
    contender: str, batch: int, seconds: Sequence[float], flops: int, peak_gflops: float | None
) -> Timing:
    median = statistics.median(seconds)
    gflops = flops * batch / median / 1e9 if flops else None
    return Timing(
        contender=contender,
        batch=batch,
        median_ms=median * 1e3,
        p10_ms=percentile(seconds, 10) * 1e3,
        p90_ms=percentile(seconds, 90) * 1e3,
        p99_ms=percentile(seconds, 99) * 1e3,
        calls=len(seconds),
        samples_per_s=batch / median,
        gflops=gflops,
        peak_share=gflops / peak_gflops if gflops is not None and peak_gflops else None,
    )


def onnxruntime_runners(
    model: OnnxModel, feeds: Mapping[str, np.ndarray], threads: int | None, provider: str = "cpu"
) -> dict[str, Runner]:
    """convkit's tuned session, and onnxruntime with its default session options for comparison, both on
    ``provider`` (``cpu``, ``cuda``, ``auto``)."""
    import onnxruntime as ort

    tuned = RuntimeSession(model, SessionOptions(provider=provider, threads=threads))
    arrays = tuned.check_feeds(feeds)
    providers = list(dict.fromkeys([tuned.provider, "CPUExecutionProvider"]))
    default_session = ort.InferenceSession(str(model.path), providers=providers)
    return {
        "convkit (onnxruntime)": tuned.bind(arrays),
        "onnxruntime defaults": lambda: default_session.run(None, arrays),
    }


def flops_per_sample(model: OnnxModel, feeds: Mapping[str, np.ndarray], batch: int) -> tuple[int, list[str]]:
    total, unknown = count_flops(model.proto, {k: tuple(np.shape(v)) for k, v in feeds.items()})
    return total // max(batch, 1), unknown


def bench_model(
    path: str,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = None,
    source: str | None = None,
    framework: str | None = None,
    min_seconds: float = 1.0,
    peak: PeakEstimate | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    provider: str = "cpu",
    data: Mapping[str, np.ndarray] | None = None,
    warmup: int = 5,
    min_calls: int = 20,
) -> BenchReport:
    """Benchmark ``path`` in onnxruntime and, with ``source``, the framework's own runners, interleaved.

    Args:
        batch_sizes: the batch sizes of the random inputs (ignored with ``data``).
        min_seconds: the least time each batch size is timed for.
        provider: onnxruntime's execution provider (``cpu``, ``cuda``, ``auto``).
        data: inputs to time on (names as the model's); one batch, the data's own.
        warmup: untimed calls of every contender before timing.
        min_calls: the least timed calls per contender.

    NOTE: why the native side is optional: a front end offers its runners (eager, compiled) through an
    optional ``benchmark_runners(model, inputs)`` method; a front end without one is simply not a contender.
    """
    import datetime

    import onnxruntime as ort

    from convkit.core.inputs import random_inputs
    from convkit.core.runtime import resolve_providers, short_provider_name, usable_cpu_count
    from convkit.frontends import Benchmarkable, LoadOptions, resolve_source
    from convkit.graph.model import load_onnx
    from convkit.perf.peak import cpu_model

    model = load_onnx(path, weights=False)
    if data is not None:
        first = np.asarray(next(iter(data.values())))
        batch_sizes = [int(first.shape[0]) if first.ndim else 1]
    specs = _checked_specs(model, [] if data is not None else batch_sizes, threads, provider)
    native = frontend = None
    if source is not None:
        step(f"loading {source}")
        frontend, preloaded = resolve_source(source, framework)
        native = frontend.load(source, LoadOptions(), preloaded)
    report = BenchReport(
        str(model.path),
        threads or usable_cpu_count(),
        0,
        peak,
        provider=short_provider_name(resolve_providers(provider)[0]),
        onnxruntime=ort.__version__,
        cpu_model=cpu_model(),
        timestamp=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        warmup=warmup,
        min_calls=min_calls,
    )
    for batch in batch_sizes:
        feeds = dict(data) if data is not None else random_inputs(specs, batch)
        flops, unknown = flops_per_sample(model, feeds, batch)
        if unknown:
            # NOTE: why no count at all: GFLOP/s and a share of peak printed on a partial count mislead
            flops = 0
            named = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
            report.notes.append(
                f"FLOPs not counted: the shapes of {len(unknown)} node(s) stayed unknown ({named}); "
                "no GFLOP/s or share of peak shown"
            )
        report.flops_per_sample = flops
        runners = onnxruntime_runners(model, feeds, threads, provider)
        _first_calls(runners, model, batch)
        if frontend is not None:
            if isinstance(frontend, Benchmarkable):
                runners.update(frontend.benchmark_runners(native, feeds))
            else:
                report.notes.append(f"the {frontend.name} front end offers no benchmark runners")
        step(f"timing batch {batch}: {', '.join(runners)}")
        rounds = 0

        def advance(count: int) -> None:
            nonlocal rounds
            rounds += count
            detail(f"round {rounds}")
            if progress is not None:
                progress(count)

        times = interleave(runners, warmup, min_calls, min_seconds, progress=advance)
        peak_gflops = None
        if peak is not None:
            peak_gflops = peak.nominal_gflops or peak.measured_gflops
        for name, seconds in times.items():
            timing = summarize(name, batch, seconds, flops, peak_gflops)
            report.timings.append(timing)
            if (warning := spread_warning(timing)) is not None:
                report.warnings.append(warning)
    return report


def spread_warning(timing: Timing) -> str | None:
    """A warning when ``timing``'s p90 is more than ``WIDE_SPREAD`` times its median, else ``None``."""
    if timing.p90_ms <= WIDE_SPREAD * timing.median_ms:
        return None
    return (
        f"{timing.contender} at batch {timing.batch}: p90 is {timing.p90_ms / timing.median_ms:.1f}x the "
        "median; something else was running or the runtime is unsteady: rerun on a quiet machine, or time "
        "longer (--seconds, --iterations)"
    )


def check_batch_sizes(
    path: str, batch_sizes: Sequence[int], threads: int | None = None, provider: str = "cpu"
) -> None:
    """Refuse batch sizes whose inputs cannot fit in memory, before anything is measured.

    NOTE: why the CLI calls this before ``bench_model``: the peak measurement and the framework's start
    take seconds; a batch size that can never fit should fail first, in one line.

    Raises:
        DataError: naming the batch size and the bytes its inputs need.
    """
    from convkit.graph.model import load_onnx

    _checked_specs(load_onnx(path, weights=False), batch_sizes, threads, provider)


def _checked_specs(
    model: OnnxModel, batch_sizes: Sequence[int], threads: int | None, provider: str = "cpu"
) -> list[Any]:
    """The model's input specs, with every batch size's inputs checked against the memory.

    Raises:
        ProviderUnavailableError: ``provider`` is ``cuda`` and this onnxruntime has no CUDA provider.
    """
    from convkit.api import specs_from_session
    from convkit.core.inputs import check_random_inputs_fit

    probe = RuntimeSession(model, SessionOptions(provider=provider, threads=threads))
    specs = specs_from_session(probe.inputs)
    for batch in batch_sizes:
        check_random_inputs_fit(
            specs, batch, f"batch size {batch} is too large here; pass smaller --batch-sizes"
        )
    return specs


def _first_calls(runners: Mapping[str, Runner], model: OnnxModel, batch: int) -> None:
    """Call each onnxruntime runner once, outside the timing, so that a failure is reported as one.

    NOTE: why: onnxruntime can refuse a batch size the inputs fit (its intermediate tensors do not); met
    inside the timing loop that was a bare onnxruntime exception.
    """
    from convkit.core.runtime import ModelRunError

    for name, run in runners.items():
        try:
            run()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelRunError(
                f"{name} failed to run {model.path.name} at batch size {batch}: {first}",
                "try smaller --batch-sizes",
            ) from exc
