"""Factories that trouble the PaddlePaddle worker: each fails in its own way, or (``unseeded``) makes other
weights at every call. paddle is imported inside the one factory that needs it."""

from __future__ import annotations

import os
import signal
from typing import Any


def raises() -> None:
    """A factory whose code has a bug."""
    raise RuntimeError("the factory broke on purpose")


def segfaults() -> None:
    """A framework crash as the worker meets it: the process dies by a signal, without an answer."""
    os.kill(os.getpid(), signal.SIGSEGV)


def not_a_layer() -> dict[str, int]:
    """Something that is no paddle.nn.Layer."""
    return {"weights": 1}


def sleeps() -> None:
    """A factory that hangs (the worker's timeout must stop it)."""
    import time

    time.sleep(60)


def unseeded() -> Any:
    """An unseeded Linear (its input is named ``input``): each call, in any process, makes other weights."""
    import paddle

    return paddle.nn.Linear(4, 3)
