"""Dynamic int8 (``convkit quantize --dynamic``): int8 weights, activations quantized as they arrive.

Only the nodes with a constant weight become int8 (MatMul, Gemm, Conv, and onnxruntime's fused Attention and
LSTM); attention's activation-by-activation MatMuls and embedding lookups stay float32 (see the notes on
``DYNAMIC_OPS`` and ``quantize_dynamic_int8``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convkit.quantize.sensitive import fold_transposed_weights

# NOTE: why not onnxruntime's default list: it adds Gather (embeddings: int8 saves memory, not time; GPT-2's
# two embedding Gathers alone moved its logits by 0.011 relative error, 97.7 % top-1 agreement), and Transpose
# and EmbedLayerNormalization, which only carry int8 tensors further.
DYNAMIC_OPS = ["MatMul", "Conv", "Attention", "LSTM"]


@dataclass
class Prepared:
    """The model dynamic int8 starts from: in memory (``proto``, a tied head's weight folded, see
    ``fold_transposed_weights``) and on disk, the MatMuls that read a folded weight, and the note on what
    stays float32 whatever the search for sensitive nodes finds."""

    proto: Any
    original: Path
    folded: Path
    tied: list[str]
    notes: list[str]

    def source(self, keep: list[str] | None) -> Path:
        """The file to quantize with ``keep`` in float32.

        NOTE: why the original when a tied head stays float32: the folded copy of its weight would stay too,
        in float32, beside the embedding it was folded from (GPT-2 small: 154 MB more than fp32 itself).
        """
        return self.original if set(self.tied) & set(keep or []) else self.folded


def prepare_dynamic(path: Path, scratch: Path) -> Prepared:
    import onnx

    proto = onnx.load(str(path))
    tied = fold_transposed_weights(proto)
    folded = scratch / "prepared.onnx" if tied else path
    if tied:
        onnx.save(proto, str(folded))
    weights = {t.name for t in proto.graph.initializer}
    pairs = [n for n in proto.graph.node if n.op_type == "MatMul" and not set(n.input[:2]) & weights]
    lookups = [n for n in proto.graph.node if n.op_type == "Gather" and n.input[0] in weights]
    # NOTE: why these stay float32 (GPT-2 small): 0.043 against 0.037 relative error with attention in
    # int8, 0.011 from the embeddings alone, and no time saved
    kept = [f"{len(pairs)} MatMul(s) of two activations (attention)"] if pairs else []
    kept += [f"{len(lookups)} Gather(s) of a weight (embeddings)"] if lookups else []
    notes = (
        [f"kept {' and '.join(kept)} in float32: int8 there costs accuracy and saves no time"] if kept else []
    )
    return Prepared(proto, path, folded, tied, notes)


def quantize_dynamic_int8(source: Path, out: Path, per_channel: bool, keep: list[str] | None = None) -> None:
    """Write ``source`` with int8 weights to ``out``, the nodes named in ``keep`` left in float32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # NOTE: why MatMulConstBOnly: int8 attention (activation x activation) took as long as float32 on GPT-2
    # small (45.0 against 45.2 ms at batch 1 for the whole model) and only added error
    quantize_dynamic(
        str(source),
        str(out),
        op_types_to_quantize=DYNAMIC_OPS,
        per_channel=per_channel,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep or [],
        extra_options={"MatMulConstBOnly": True},
    )
