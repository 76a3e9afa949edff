"""The parity gate of ``convkit quantize``: how far the quantized outputs moved from fp32, and the bars.

Every model is gated: a classifier (a float score tensor whose last axis holds classes) by its top-1
agreement with fp32, every other model by the relative error of its outputs. ``--max-abs-diff``,
``--max-rel-error`` and ``--min-cosine``, when given, gate every model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MIN_TOP1 = 0.99
# NOTE: why 0.05 (a signal-to-quantization-noise ratio of 26 dB): measured on convkit's models, int8 moves
# the reference CNN's logits by 0.019 (static) to 0.021 (dynamic) relative error, fp16 by 0.0004; a
# regression MLP whose int8 input step swallowed its small features lands at 1.0. The bar sits between.
DEFAULT_MAX_REL_ERROR = 0.05


@dataclass
class ErrorStats:
    """How the candidate's outputs differ from fp32's over the evaluation data (every output together)."""

    samples: int
    top1_agreement: float | None
    """Share of argmax agreement on the first output when it is a classifier's scores, else ``None``."""
    max_abs_diff: float
    mean_abs_diff: float
    rel_error: float
    """``||quantized - fp32|| / ||fp32||`` (L2 norms over every output value)."""
    cosine: float
    """Cosine similarity of the quantized and fp32 outputs, all values as one vector."""


@dataclass
class Check:
    """One bar the quantized model must meet."""

    name: str
    value: float
    bar: float
    at_least: bool
    """``True``: the value must be >= the bar; ``False``: <= the bar."""

    @property
    def passed(self) -> bool:
        # NOTE: why this way round: a nan value must fail, and every comparison with nan is false
        return self.value >= self.bar if self.at_least else self.value <= self.bar

    def describe(self, verdict: bool = True) -> str:
        """``relative error 0.0188 (bar <= 0.05): pass`` (without ``: pass`` when not ``verdict``)."""
        percent = self.name == "top-1 agreement"
        shown = f"{self.value:.2%}" if percent else f"{self.value:.3g}"
        bar = f"{self.bar:.2%}" if percent else f"{self.bar:.3g}"
        text = f"{self.name} {shown} (bar {'>=' if self.at_least else '<='} {bar})"
        return text + (f": {'pass' if self.passed else 'FAIL'}" if verdict else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "bar": self.bar,
            "op": ">=" if self.at_least else "<=",
            "passed": self.passed,
        }


@dataclass
class Gate:
    """The bars: ``None`` leaves a bar unset (``max_rel_error`` ``None`` means the default for
    non-classifiers only)."""

    min_top1: float = DEFAULT_MIN_TOP1
    max_abs_diff: float | None = None
    max_rel_error: float | None = None
    min_cosine: float | None = None

    def passes(self, stats: ErrorStats) -> bool:
        return all(check.passed for check in self.checks(stats))

    def checks(self, stats: ErrorStats) -> list[Check]:
        """The bars that apply to a model with these statistics, each with its value."""
        found = []
        if stats.top1_agreement is not None:
            found.append(Check("top-1 agreement", stats.top1_agreement, self.min_top1, at_least=True))
        rel_bar = self.max_rel_error
        if rel_bar is None and stats.top1_agreement is None:
            # NOTE: why only where top-1 is unavailable: a classifier's verdict is its predictions; its
            # logits may move more than a regression's values without changing one answer
            rel_bar = DEFAULT_MAX_REL_ERROR
        if rel_bar is not None:
            found.append(Check("relative error", stats.rel_error, rel_bar, at_least=False))
        if self.max_abs_diff is not None:
            found.append(Check("max abs diff", stats.max_abs_diff, self.max_abs_diff, at_least=False))
        if self.min_cosine is not None:
            found.append(Check("cosine similarity", stats.cosine, self.min_cosine, at_least=True))
        return found


class Cached:
    """``session``'s outputs, computed once for each feeds mapping (the same objects, held by the caller).

    NOTE: why: every candidate is checked against fp32 on the same batches; the search for nodes to keep in
    float32 checks several, and fp32's runs were a third of each check on ViT-B/16.
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        self._outputs: dict[int, tuple[Mapping[str, np.ndarray], dict[str, np.ndarray]]] = {}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if id(feeds) not in self._outputs:
            # the feeds are kept with their outputs so that their id is not reused
            self._outputs[id(feeds)] = (feeds, self._session.run(feeds))
        return self._outputs[id(feeds)][1]


def _is_scores(array: np.ndarray) -> bool:
    return array.ndim >= 2 and array.dtype.kind == "f" and array.shape[-1] > 1


def evaluate(
    fp32: Any,
    candidate: Any,
    batches: Sequence[dict[str, np.ndarray]],
    samples: int,
    observe: Callable[[str, np.ndarray, np.ndarray], None] | None = None,
) -> ErrorStats:
    """Run both sessions on every batch and measure how the candidate's outputs moved.

    Args:
        fp32: the fp32 model's ``RuntimeSession``.
        candidate: the quantized model's ``RuntimeSession``.
        batches: the evaluation feeds.
        samples: how many samples the batches hold together.
        observe: called with each output's name, fp32 and candidate arrays, batch by batch.
    """
    agree = seen = count = 0
    classify = True
    max_diff = sum_diff = sq_diff = sq_ref = sq_got = dot = 0.0
    for feeds in batches:
        expected, actual = fp32.run(feeds), candidate.run(feeds)
        for position, (name, ref) in enumerate(expected.items()):
            if observe is not None:
                observe(name, np.asarray(ref), np.asarray(actual[name]))
            ref64 = np.asarray(ref, dtype=np.float64)
            got64 = np.asarray(actual[name], dtype=np.float64)
            diff = got64 - ref64
            if diff.size:
                max_diff = max(max_diff, float(np.abs(diff).max()))
            sum_diff += float(np.abs(diff).sum())
            sq_diff += float((diff * diff).sum())
            sq_ref += float((ref64 * ref64).sum())
            sq_got += float((got64 * got64).sum())
            dot += float((ref64 * got64).sum())
            count += diff.size
            if position == 0:
                if _is_scores(np.asarray(ref)):
                    agree += int((ref64.argmax(-1) == got64.argmax(-1)).sum())
                    seen += int(np.prod(ref64.shape[:-1]))
                else:
                    classify = False
    # NOTE: why these two norms: an all-zero fp32 output makes relative error undefined; then any change is
    # infinitely large and none is zero, which is what a gate should say
    rel = math.sqrt(sq_diff / sq_ref) if sq_ref else (0.0 if sq_diff == 0 else math.inf)
    cosine = dot / math.sqrt(sq_ref * sq_got) if sq_ref and sq_got else (1.0 if sq_ref == sq_got else 0.0)
    return ErrorStats(
        samples=samples,
        top1_agreement=agree / seen if classify and seen else None,
        max_abs_diff=max_diff,
        mean_abs_diff=sum_diff / max(count, 1),
        rel_error=rel,
        cosine=cosine,
    )
