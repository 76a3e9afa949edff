"""Factories that trouble the Chainer worker: each fails in its own way, or (``unseeded``) makes other weights
at every call. chainer is imported inside the factories that need it."""

from __future__ import annotations

from typing import Any


def not_a_link() -> dict[str, int]:
    """Something that is no chainer.Link."""
    return {"weights": 1}


def unsupported() -> Any:
    """A chain calling ``F.erf``, a Chainer function that onnx-chainer has no converter for."""
    import chainer
    import chainer.functions as F
    import chainer.links as L

    class ErfHead(chainer.Chain):
        def __init__(self) -> None:
            super().__init__()
            with self.init_scope():
                self.fc = L.Linear(4, 3)

        def forward(self, x: Any) -> Any:
            return F.erf(self.fc(x))

    return ErfHead()


def unseeded() -> Any:
    """A lazy, unseeded ``L.Linear(None, 3)`` (its input is named ``x``): each call, in any process, makes
    other weights, and only once it has seen an input."""
    import chainer.links as L

    return L.Linear(None, 3)
