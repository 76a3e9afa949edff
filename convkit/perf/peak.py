"""The machine's peak FP32 rate: nominal (from the CPU's vector width, FMA units and clock) and measured
(a large float32 matmul through NumPy's BLAS)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from convkit.core.runtime import usable_cpu_count

# NOTE: why 2 FMA units: AVX-512 and AVX2 server cores since Haswell/Skylake-SP issue two FMAs per cycle;
# on a part with one (some Xeon Bronze/Silver) the nominal figure is an upper bound; the measured shows it.
FMA_UNITS = 2


@dataclass
class PeakEstimate:
    nominal_gflops: float | None
    measured_gflops: float
    description: str


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what ``platform`` knows), for benchmark records."""
    import platform

    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def nominal_peak_gflops(cpus: int | None = None) -> tuple[float | None, str]:
    """cores x FP32 lanes x 2 (multiply+add) x FMA units x clock; ``None`` when /proc/cpuinfo lacks them."""
    info = _cpuinfo()
    flag_line = re.search(r"^flags\s*:\s*(.*)$", info, re.M)
    flags = set(flag_line.group(1).split()) if flag_line else set()
    lanes = (
        16 if "avx512f" in flags else 8 if "avx2" in flags and "fma" in flags else 4 if "sse2" in flags else 0
    )
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)
    ghz_in_name = re.search(r"@\s*([\d.]+)\s*GHz", info)
    ghz = float(ghz_in_name.group(1)) if ghz_in_name else (float(mhz.group(1)) / 1000 if mhz else 0.0)
    cpus = cpus or usable_cpu_count()
    if not lanes or not ghz:
        return None, "unknown CPU vector width or clock"
    isa = {16: "AVX-512", 8: "AVX2+FMA", 4: "SSE2"}[lanes]
    peak = cpus * lanes * 2 * FMA_UNITS * ghz
    return peak, f"{cpus} CPUs x {isa} ({lanes} fp32 lanes) x 2 flops x {FMA_UNITS} FMA units x {ghz:.2f} GHz"


def measured_matmul_gflops(n: int = 1024, seconds: float = 0.5) -> float:
    """GFLOP/s of a float32 ``n x n`` matmul in NumPy (best of the runs that fit in ``seconds``)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b  # warm-up
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return 2 * n**3 / best / 1e9


def estimate_peak() -> PeakEstimate:
    nominal, description = nominal_peak_gflops()
    return PeakEstimate(nominal, measured_matmul_gflops(), description)
