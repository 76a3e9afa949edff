"""Factories that trouble the Theano worker: each breaks the factory convention or the converter in its own
way, or (``unseeded``) makes other weights at every call. pytensor is imported inside the factories."""

from __future__ import annotations

from typing import Any


def not_a_graph() -> dict[str, int]:
    """A result that is no PyTensor model (a user returning the weights instead of the graph)."""
    return {"weights": 1}


def compiled_function() -> Any:
    """A compiled ``pytensor.function``: the common mistake, the graph is what convkit needs."""
    import pytensor
    import pytensor.tensor as pt

    x = pt.tensor("x", dtype="float32", shape=(None, 4))
    return pytensor.function([x], x * 2)


def sorts() -> dict[str, list[Any]]:
    """A graph with an op the converter has no rule for (``pt.sort``)."""
    import pytensor.tensor as pt

    x = pt.tensor("x", dtype="float32", shape=(None, 4))
    ranked = pt.sort(x, axis=-1)
    return {"inputs": [x], "outputs": [ranked * 2]}


def unseeded() -> tuple[list[Any], list[Any]]:
    """A dense layer drawn from an unseeded generator (its input named ``input``), as the tuple form: each
    call, in any process, makes other weights."""
    import numpy as np
    import pytensor
    import pytensor.tensor as pt

    w = pytensor.shared(np.random.default_rng().standard_normal((4, 3)).astype("float32"), name="w")
    x = pt.tensor("input", dtype="float32", shape=(None, 4))
    return [x], [pt.tanh(pt.dot(x, w))]
