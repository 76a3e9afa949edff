"""Factories that trouble the MXNet worker: each fails in its own way, or (``unseeded``, ``deferred``) makes
other weights at every call. mxnet is imported inside the factories that need it."""

from __future__ import annotations

import os
from typing import Any


def raises() -> None:
    """A factory whose code has a bug."""
    raise RuntimeError("the factory broke on purpose")


def plain_block() -> Any:
    """A gluon.Block (imperative only), which MXNet cannot trace to a symbol."""
    from mxnet import gluon

    class Doubler(gluon.Block):
        def forward(self, x: Any) -> Any:
            return x * 2

    return Doubler()


def not_initialized() -> Any:
    """A Dense layer whose parameters were never initialized."""
    from mxnet.gluon import nn

    return nn.Dense(3, in_units=4)


def untranslatable() -> Any:
    """A block using ``erf``, which mx.onnx has no ONNX translation for."""
    import mxnet as mx
    from mxnet import gluon
    from mxnet.gluon import nn

    class ErfHead(gluon.HybridBlock):
        def __init__(self) -> None:
            super().__init__()
            with self.name_scope():
                self.proj = nn.Dense(3, in_units=4)

        def hybrid_forward(self, F: Any, x: Any) -> Any:
            return F.erf(self.proj(x))

    mx.random.seed(0)
    block = ErfHead()
    block.initialize()
    return block


def _reseed() -> None:
    """Seed MXNet from the OS: MXNet starts every process with the same seed, so a factory that does not
    seed would still make the same weights in each; this one stands for those that differ (time, data)."""
    import mxnet as mx

    mx.random.seed(int.from_bytes(os.urandom(4), "little"))


def unseeded() -> Any:
    """An unseeded Dense layer (its input is named ``x``): each call, in any process, makes other weights."""
    from mxnet.gluon import nn

    _reseed()
    block = nn.Dense(3, in_units=4)
    block.initialize()
    return block


def deferred() -> Any:
    """A Dense layer whose input size Gluon infers at the first call (deferred initialization), unseeded."""
    from mxnet.gluon import nn

    _reseed()
    block = nn.Dense(3)
    block.initialize()
    return block
