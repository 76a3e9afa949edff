"""The README's performance table: the reference CNN in every contender, interleaved in one process.

    .venv/bin/python scripts/bench_reference_cnn.py [--weights W.npz] [--batch-sizes 1,64] [--seconds 3]
                                                    [--json bench.json]

Contenders at each batch size, one call each per round in rotating order (``convkit.perf.bench.interleave``):
convkit's onnxruntime session (fp32 and static int8 QDQ), onnxruntime with its default session options, torch
eager and torch.compile, Keras eager and tf.function. All run the same trained weights on the same digits.
Ratios are printed against the targets of the performance issue; nothing here is asserted by the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

# (description, numerator, denominator at a batch, target ratio)
TARGETS = [
    ("convkit vs torch eager, batch 1", "convkit fp32", "torch eager", 1, 4.0),
    ("convkit vs best native, largest batch", "convkit fp32", "best native", -1, 2.0),
    ("int8 vs fp32 (convkit), largest batch", "convkit int8", "convkit fp32", -1, 1.3),
]
NATIVE = ("torch eager", "torch.compile", "keras eager", "keras tf.function")


def trained_weights(path: str | None, epochs: int) -> tuple[dict[str, np.ndarray], str]:
    from convkit.reference.cnn import load_digits, load_weights

    if path:
        return load_weights(path), f"weights from {path}"
    from convkit.frontends import get_frontend

    keras = get_frontend("tensorflow")
    weights = keras.train_reference_cnn(load_digits(), epochs, 0, lambda *_: None)  # type: ignore[attr-defined]
    return weights, f"trained {epochs} epochs with Keras on the bundled digits"


def build_contenders(weights: dict[str, np.ndarray], out: Path, x_train: np.ndarray, x_test: np.ndarray):
    """Export the PyTorch model to ONNX (parity checked), quantize it, and load every contender's model."""
    from convkit import api
    from convkit.core.artifacts import save_npz_atomic
    from convkit.core.inputs import parse_input_spec
    from convkit.frontends import get_frontend
    from convkit.graph.model import load_onnx
    from convkit.quantize import quantize_model

    torch_frontend, keras_frontend = get_frontend("torch"), get_frontend("tensorflow")
    torch_model = torch_frontend.reference_cnn(weights)  # type: ignore[attr-defined]
    example = {"x": x_test[:2]}
    summary = api.export_native(
        torch_frontend,
        torch_model,
        specs=[parse_input_spec("x:batch,1,28,28")],
        example=example,
        output=out / "fp32.onnx",
        source="bench",
    )
    assert summary.report.passed, "export lost parity"
    save_npz_atomic(out / "calibration.npz", {"x": x_train[:512]})
    save_npz_atomic(out / "eval.npz", {"x": x_test})
    quantized = quantize_model(
        out / "fp32.onnx", out / "int8.onnx", "static", out / "calibration.npz", out / "eval.npz"
    )
    keras_model = keras_frontend.reference_cnn(weights)  # type: ignore[attr-defined]
    return (
        torch_frontend,
        torch_model,
        keras_frontend,
        keras_model,
        load_onnx(out / "fp32.onnx"),
        load_onnx(out / "int8.onnx") if quantized.written else None,
        quantized,
    )


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    from convkit.core.runtime import RuntimeSession, SessionOptions

    session = RuntimeSession(model, SessionOptions(provider="cpu"))
    probs = next(iter(session.run({"x": x}).values()))
    return float((probs.argmax(-1) == y).mean())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", help="canonical weights (.npz); default: train with Keras first")
    parser.add_argument("--epochs", type=int, default=5, help="epochs when training (default 5)")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per batch size")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads for every contender")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()

    import torch

    from convkit.core.runtime import RuntimeSession, SessionOptions, usable_cpu_count
    from convkit.graph.flops import count_flops
    from convkit.perf.bench import interleave, onnxruntime_runners, summarize
    from convkit.perf.peak import estimate_peak
    from convkit.reference.cnn import load_digits

    threads = args.threads or usable_cpu_count()
    torch.set_num_threads(threads)
    x_train, _, x_test, y_test = load_digits()
    weights, origin = trained_weights(args.weights, args.epochs)
    peak = estimate_peak()
    peak_gflops = peak.nominal_gflops or peak.measured_gflops
    with tempfile.TemporaryDirectory() as scratch:
        (torch_frontend, torch_model, keras_frontend, keras_model, fp32, int8, quantized) = build_contenders(
            weights, Path(scratch), x_train, x_test
        )
        flops, _ = count_flops(fp32.proto, {"x": (1, 1, 28, 28)})
        print(f"reference CNN: {flops / 1e6:.2f} MFLOP per sample; {origin}")
        print(
            f"peak: {peak.description} = {peak.nominal_gflops or 0:.0f} GFLOP/s nominal, "
            f"{peak.measured_gflops:.0f} measured (NumPy matmul); {threads} threads"
        )
        print(
            f"accuracy on {len(y_test)} held-out digits: fp32 {accuracy(fp32, x_test, y_test):.4f}"
            + (f", int8 {accuracy(int8, x_test, y_test):.4f}" if int8 is not None else "")
        )
        print(
            f"int8 static QDQ: top-1 agreement with fp32 {quantized.top1_agreement:.4f}, "
            f"per-channel {quantized.per_channel}, written {quantized.written}"
        )
        timings = []
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            x = x_test[np.arange(batch) % len(x_test)]
            onnxruntime = onnxruntime_runners(fp32, {"x": x}, threads)
            runners = {
                "convkit fp32": onnxruntime["convkit (onnxruntime)"],
                "onnxruntime defaults": onnxruntime["onnxruntime defaults"],
            }
            if int8 is not None:
                runners["convkit int8"] = RuntimeSession(int8, SessionOptions("cpu", threads)).bind({"x": x})
            runners.update(torch_frontend.benchmark_runners(torch_model, {"x": x}))  # type: ignore[attr-defined]
            nhwc = {"x": np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
            runners.update(keras_frontend.benchmark_runners(keras_model, nhwc))  # type: ignore[attr-defined]
            print(f"batch {batch}: timing {', '.join(runners)} ...", flush=True)
            times = interleave(runners, min_seconds=args.seconds)
            timings += [summarize(name, batch, secs, flops, peak_gflops) for name, secs in times.items()]
    print()
    print("| contender | batch | median ms | p10 ms | p90 ms | samples/s | GFLOP/s | % of peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in timings:
        print(
            f"| {t.contender} | {t.batch} | {t.median_ms:.3f} | {t.p10_ms:.3f} | {t.p90_ms:.3f} | "
            f"{t.samples_per_s:,.0f} | {t.gflops:.1f} | {100 * (t.peak_share or 0):.0f} % |"
        )
    print()
    batches = sorted({t.batch for t in timings})
    ratios = []
    for description, numerator, denominator, batch_index, target in TARGETS:
        batch = batches[batch_index] if batch_index == -1 else batch_index
        at = {t.contender: t.median_ms for t in timings if t.batch == batch}
        if denominator == "best native":
            natives = {k: v for k, v in at.items() if k in NATIVE}
            denominator = min(natives, key=natives.__getitem__) if natives else denominator
        if numerator not in at or denominator not in at:
            continue
        ratio = at[denominator] / at[numerator]
        ratios.append({"what": description, "vs": denominator, "ratio": ratio, "target": target})
        verdict = "meets" if ratio >= target else "MISSES"
        print(f"{description} ({denominator}): {ratio:.2f}x, target {target}x: {verdict}")
    share = [t.peak_share for t in timings if t.contender == "convkit fp32" and t.batch == batches[-1]]
    if share and share[0] is not None:
        print(f"convkit fp32 at batch {batches[-1]}: {100 * share[0]:.0f} % of nominal peak (aim 60 %)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "timings": [t.to_dict() for t in timings],
                    "ratios": ratios,
                    "int8": quantized.to_dict(),
                    "peak": peak.__dict__,
                    "weights": origin,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
