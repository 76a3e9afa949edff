"""The worker side's shared pieces, without any framework: the weights check every worker uses, and the
reference-CNN shapes each framework's reference module copies (they cannot import convkit)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import convkit.frontends
from convkit.frontends._worker.env.protocol import WorkerFailure, check_weights_fit
from convkit.reference.cnn import SHAPES


def test_weights_that_fit_pass_and_every_misfit_is_named_in_one_line():
    own = {"fc.weight": (4, 3), "fc.bias": (4,), "lazy": None}
    check_weights_fit("w.npz", own, {"fc.weight": (4, 3), "fc.bias": (4,), "lazy": (9,)}, "hint")
    with pytest.raises(WorkerFailure) as caught:
        check_weights_fit(
            "w.npz",
            own,
            {"fc.weight": (3, 4), "extra": (1,), "lazy": (2,)},
            "save them from this model",
            wrong_dtypes=["lazy float64 (want float32)"],
        )
    failure = caught.value
    assert failure.kind == "load" and failure.hint == "save them from this model"
    assert failure.message == (
        "the weights in w.npz do not fit the model: missing fc.bias; unexpected extra; "
        "wrong shape fc.weight [3, 4] (want [4, 3]); wrong dtype lazy float64 (want float32)"
    )


def test_a_custom_fit_accepts_shapes_the_framework_infers_later():
    def fits(shape: tuple[int, ...], declared: tuple[int, ...]) -> bool:  # MXNet: 0 = inferred at first call
        return len(shape) == len(declared) and all(d in (0, s) for s, d in zip(shape, declared, strict=True))

    check_weights_fit("w.params", {"dense.weight": (10, 0)}, {"dense.weight": (10, 1600)}, None, fits)


FRONTENDS_DIR = Path(convkit.frontends.__file__).parent


@pytest.mark.parametrize(
    "path", sorted(FRONTENDS_DIR.glob("*/env/reference.py")), ids=lambda p: p.parent.parent.name
)
def test_each_frameworks_reference_module_has_the_canonical_shapes(path: Path):
    tree = ast.parse(path.read_text())
    found = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "SHAPES"
    )
    assert ast.literal_eval(found) == SHAPES
