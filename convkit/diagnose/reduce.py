"""``convkit reduce``: cut a failing model down to the node that diverges, as a self-contained test case.

The repro is written in the standard ONNX test layout (``model.onnx`` + ``test_data_set_0/``): the inputs are
the oracle's values at the node's inputs, the expected outputs the oracle's values at its output, so
``convkit verify REPRO_DIR`` (or any ONNX test runner) fails on it exactly as the whole model did.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convkit.core.artifacts import atomic_dir, write_test_data_set
from convkit.core.compare import Tolerance
from convkit.core.run import open_session
from convkit.core.runtime import SessionOptions
from convkit.diagnose.localize import Localization, localize, oracle_evaluator
from convkit.errors import ConvkitError
from convkit.graph.model import OnnxModel


class NothingToReduceError(ConvkitError):
    """No node diverges, so there is no failing subgraph to cut out."""


@dataclass
class Repro:
    folder: Path
    localization: Localization
    nodes: int


def reduce_model(
    model: OnnxModel,
    feeds: Mapping[str, np.ndarray],
    output_dir: str | os.PathLike[str],
    oracle: str | OnnxModel = "reference",
    tolerance: Tolerance | None = None,
) -> Repro:
    """Localize the first divergence and write the subgraph that reproduces it to ``output_dir``."""
    import onnx
    from onnx.utils import Extractor

    # NOTE: why the feeds are checked first: the oracles (onnx's reference implementation above all) meet
    # a wrong name, dtype or shape deep inside a kernel, as a bare ValueError or TypeError; onnxruntime's
    # view of the inputs gives the message that names what the model takes.
    open_session(model, SessionOptions(provider="cpu"), feeds).check_feeds(feeds)
    found = localize(model, feeds, oracle, tolerance)
    if found.first is None:
        raise NothingToReduceError(
            f"{model.path.name} does not diverge from the {found.oracle} on these inputs",
            "nothing to reduce; check the data, or localize against the framework with verify --localize",
        )
    first = found.first
    initializers = {t.name for t in model.proto.graph.initializer}
    inputs = [name for name in first.inputs if name not in initializers]
    evaluate, _ = oracle_evaluator(model, oracle)
    values = evaluate([*inputs, first.output], feeds)
    expected_inputs = dict(zip(inputs, values[: len(inputs)], strict=True))
    sub = Extractor(onnx.shape_inference.infer_shapes(model.proto)).extract_model(inputs, [first.output])
    sub.producer_name = "convkit reduce"
    target = Path(output_dir)
    with atomic_dir(target) as tmp:
        onnx.save(sub, tmp / "model.onnx")
        write_test_data_set(tmp, expected_inputs, {first.output: values[-1]})
    return Repro(target, found, len(sub.graph.node))
