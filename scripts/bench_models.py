"""The README's real-model performance table: full-size architectures in every contender, in one process.

    .venv/bin/python scripts/bench_models.py [--models bert,gpt2,vit,resnet50,keras_resnet50]
                                             [--batch-sizes 1,8] [--seconds 3] [--json bench.json]

Models (Hugging Face configs with their published sizes, random weights, nothing downloaded): BERT-base and
GPT-2 small at sequence 128, ViT-B/16 and ResNet-50 at 224x224, and Keras's ResNet50 (``keras.applications``,
``weights=None``). Each is exported by convkit (parity checked), quantized to int8 (dynamic per-channel MatMul
weights for the transformers, the most sensitive kept in float32 where int8 everywhere loses parity; static
QDQ per-channel for the convnets; every result gated on parity with fp32: top-1 agreement for classifiers,
cosine similarity for encoders), then timed side by side with the framework itself: torch eager and
torch.compile, or Keras eager and tf.function; one call each per round in rotating order
(``convkit.perf.bench.interleave``). Prints medians, FLOPs counted from the graph, and the ratios of the
performance targets; nothing here is asserted by the test suite.

The factories double as sources for the memory script: ``convkit export scripts/bench_models.py:bert_base``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SEQUENCE = 128
IMAGE = 224
TARGET_FP32 = 1.5  # convkit fp32 vs the best native contender, batch 1
TARGET_INT8 = 2.0  # convkit int8 vs the best native contender, batch 1


def bert_base() -> Any:
    """BERT-base (12 layers, hidden 768, 12 heads): ``input_ids``, ``attention_mask`` -> last hidden state."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(), add_pooling_layer=False).eval()

    class Bert(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Bert().eval()


def gpt2_small() -> Any:
    """GPT-2 small (12 layers, hidden 768): ``input_ids`` -> next-token logits (vocabulary 50257)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(use_cache=False)).eval()

    class Gpt2(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt2 = model

        def forward(self, input_ids: Any) -> Any:
            return self.gpt2(input_ids=input_ids, use_cache=False).logits

    return Gpt2().eval()


def vit_base() -> Any:
    """ViT-B/16 at 224x224, 1000 classes: ``pixel_values`` -> logits."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(num_labels=1000)).eval()

    class Vit(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = model

        def forward(self, pixel_values: Any) -> Any:
            return self.vit(pixel_values=pixel_values).logits

    return Vit().eval()


def resnet50() -> Any:
    """ResNet-50 (the Hugging Face config's defaults), 1000 classes: ``pixel_values`` -> logits."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(num_labels=1000)).eval()

    class ResNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.resnet = model

        def forward(self, pixel_values: Any) -> Any:
            return self.resnet(pixel_values=pixel_values).logits

    return ResNet().eval()


def keras_resnet50() -> Any:
    """``keras.applications.ResNet50`` (weights=None), logits (no softmax, so outputs depend on the input)."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.applications.ResNet50(
        weights=None, input_shape=(IMAGE, IMAGE, 3), classifier_activation=None
    )


@dataclass
class Case:
    name: str
    factory: Callable[[], Any]
    framework: str
    specs: list[str]
    int8: str  # "dynamic" or "static"
    classifier: bool

    def inputs(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from convkit.core.inputs import parse_input_spec

        arrays = {}
        for spec in (parse_input_spec(text) for text in self.specs):
            shape = [batch if isinstance(d, str) else d for d in spec.dims]
            if spec.dtype == "int64":
                arrays[spec.name] = (
                    np.ones(shape, np.int64)
                    if spec.name == "attention_mask"
                    else rng.integers(0, 1000, shape).astype(np.int64)
                )
            else:
                arrays[spec.name] = rng.standard_normal(shape).astype(np.float32)
        return arrays


TOKENS = [f"input_ids:batch,{SEQUENCE}:int64"]
MASK = [f"attention_mask:batch,{SEQUENCE}:int64"]
PIXELS = [f"pixel_values:batch,3,{IMAGE},{IMAGE}"]
CASES = {
    "bert": Case("BERT-base, seq 128", bert_base, "torch", TOKENS + MASK, "dynamic", False),
    "gpt2": Case("GPT-2 small, seq 128", gpt2_small, "torch", TOKENS, "dynamic", True),
    "vit": Case("ViT-B/16, 224x224", vit_base, "torch", PIXELS, "dynamic", True),
    "resnet50": Case("ResNet-50, 224x224", resnet50, "torch", PIXELS, "static", True),
    # the input's name is the Keras model's own; bench_case reads it from the model
    "keras_resnet50": Case("Keras ResNet50, 224x224", keras_resnet50, "tensorflow", [], "static", True),
}


def cpu_flags() -> str:
    """The vector extensions that decide which kernels onnxruntime and torch pick."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return platform.processor() or "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
    return " ".join(flag for flag in wanted if f" {flag}" in flags) or "none of avx2/avx512/amx"


def bench_case(key: str, case: Case, batches: list[int], seconds: float, scratch: Path) -> dict[str, Any]:
    """Export, quantize and time one model; returns its rows and notes."""
    from convkit import api
    from convkit.core.artifacts import save_npz_atomic
    from convkit.core.inputs import parse_input_spec
    from convkit.core.runtime import RuntimeSession, SessionOptions, usable_cpu_count
    from convkit.frontends import get_frontend
    from convkit.graph.flops import count_flops
    from convkit.graph.model import load_onnx
    from convkit.perf.bench import interleave, onnxruntime_runners, summarize
    from convkit.quantize import quantize_model

    rng = np.random.default_rng(0)
    frontend = get_frontend(case.framework)
    model = case.factory()
    if case.framework == "tensorflow":  # Keras names the input after the model; take it from there
        case.specs = [f"{model.inputs[0].name}:batch,{IMAGE},{IMAGE},3"]
    started = time.perf_counter()
    summary = api.export_native(
        frontend,
        model,
        specs=[parse_input_spec(text) for text in case.specs],
        example=case.inputs(2, rng),
        output=scratch / f"{key}.onnx",
        source=key,
    )
    export_s = time.perf_counter() - started
    assert summary.report.passed, f"{key}: the export lost parity"
    fp32 = load_onnx(scratch / f"{key}.onnx")
    save_npz_atomic(scratch / f"{key}_calib.npz", case.inputs(32, rng))
    save_npz_atomic(scratch / f"{key}_eval.npz", case.inputs(32, np.random.default_rng(1)))
    quantized = quantize_model(
        fp32.path,
        scratch / f"{key}_int8.onnx",
        case.int8,
        scratch / f"{key}_calib.npz" if case.int8 == "static" else None,
        scratch / f"{key}_eval.npz",
        # NOTE: why per-channel for dynamic too: it cost no time on GPT-2 small (45.2 against 45.6 ms at
        # batch 1) and moved its logits less (0.0375 against 0.0453 relative error)
        per_channel="on",
        # NOTE: why no top-1 bar for an encoder: the argmax of a hidden state means nothing
        min_top1=0.99 if case.classifier else 0.0,
        min_cosine=None if case.classifier else 0.999,
        time_seconds=0,
    )
    int8 = load_onnx(scratch / f"{key}_int8.onnx") if quantized.written else None
    threads = usable_cpu_count()
    rows = []
    for batch in batches:
        feeds = case.inputs(batch, rng)
        flops, unknown = count_flops(fp32.proto, {k: v.shape for k, v in feeds.items()})
        runners = {"convkit fp32": onnxruntime_runners(fp32, feeds, threads)["convkit (onnxruntime)"]}
        if int8 is not None:
            runners["convkit int8"] = RuntimeSession(int8, SessionOptions("cpu", threads)).bind(feeds)
        runners.update(frontend.benchmark_runners(model, feeds))  # type: ignore[attr-defined]
        print(f"  {case.name}, batch {batch}: timing {', '.join(runners)}", flush=True)
        times = interleave(runners, min_seconds=seconds)
        for name, secs in times.items():
            row = summarize(name, batch, secs, 0 if unknown else flops // batch, None).to_dict()
            rows.append({"model": case.name, **row})
    return {
        "model": case.name,
        "export_seconds": export_s,
        "flops_per_sample": flops // batches[-1] if not unknown else None,
        "int8": quantized.to_dict(),
        "rows": rows,
    }


def ratios(result: dict[str, Any]) -> list[str]:
    """convkit fp32 and int8 against the best native contender at batch 1, with the targets."""
    at = {r["contender"]: r["median_ms"] for r in result["rows"] if r["batch"] == 1}
    natives = {k: v for k, v in at.items() if not k.startswith("convkit")}
    if not natives:
        return []
    best = min(natives, key=natives.__getitem__)
    lines = []
    for contender, target in (("convkit fp32", TARGET_FP32), ("convkit int8", TARGET_INT8)):
        if contender in at:
            ratio = natives[best] / at[contender]
            verdict = "meets" if ratio >= target else f"MISSES by {target / ratio:.2f}x"
            what = f"{result['model']}: {contender} vs {best}, batch 1"
            lines.append(f"{what}: {ratio:.2f}x (target {target}x: {verdict})")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model and batch size")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CASES]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    from convkit.perf.peak import cpu_model

    print(f"CPU: {cpu_model()}; flags: {cpu_flags()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for key in keys:
            print(f"{CASES[key].name}: export, quantize, time", flush=True)
            results.append(bench_case(key, CASES[key], batches, args.seconds, Path(scratch)))
    print()
    print("| model | contender | batch | median ms | p90 ms | samples/s | GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for result in results:
        for r in result["rows"]:
            gflops = "-" if r["gflops"] is None else f"{r['gflops']:.1f}"
            cells = [r["model"], r["contender"], r["batch"], f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}"]
            print("| " + " | ".join(map(str, [*cells, f"{r['samples_per_s']:,.1f}", gflops])) + " |")
    print()
    for result in results:
        flops = result["flops_per_sample"]
        int8 = result["int8"]
        print(
            f"{result['model']}: {'?' if flops is None else f'{flops / 1e9:.2f}'} GFLOP per sample; export "
            f"{result['export_seconds']:.0f} s; int8 {int8['mode']} written={int8['written']} "
            f"top-1 agreement {int8.get('top1_agreement')} cosine {int8.get('cosine')}"
        )
        for line in ratios(result):
            print(line)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"cpu_flags": cpu_flags(), "results": results}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
