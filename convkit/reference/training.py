"""``convkit train``: the reference CNN trained by each framework's own front end, on the bundled digits.

Each front end trains in its own idiom (a PyTorch optimizer loop, Keras compile/fit) and returns canonical
weights, so a model trained in one framework loads in every other (``convkit matrix --weights``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convkit.errors import ConvkitError
from convkit.frontends import Trainable, frontend_info, get_frontend
from convkit.reference.cnn import load_digits, save_weights

# progress(epoch, epochs, metrics) after each epoch
Progress = Callable[[int, int, dict[str, float]], None]


@dataclass
class TrainResult:
    framework: str
    epochs: int
    test_accuracy: float
    seconds: float
    output: str
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(probs).argmax(-1) == labels).mean())


def train(
    framework: str,
    output: str | os.PathLike[str],
    epochs: int = 10,
    seed: int = 0,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the reference CNN with ``framework``'s own training loop and save canonical weights.

    The front end provides ``train_reference_cnn(data, epochs, seed, progress)`` returning canonical weights
    and ``reference_cnn(weights)`` building the model; accuracy is measured on the held-out split by running
    the trained model natively.
    """
    frontend = get_frontend(framework)
    if not isinstance(frontend, Trainable):
        why = frontend_info(frontend.name).cannot_train or "not implemented yet"
        raise ConvkitError(
            f"the {frontend.name} front end cannot train the reference CNN: {why}",
            "train it in another framework (convkit train --framework torch -o weights.npz): canonical "
            "weights load into every framework's reference CNN (convkit matrix --weights weights.npz)",
        )
    x_train, y_train, x_test, y_test = data = load_digits(seed)
    start = time.perf_counter()
    history: list[dict[str, float]] = []

    def record(epoch: int, total: int, metrics: dict[str, float]) -> None:
        history.append({"epoch": float(epoch), **metrics})
        if progress:
            progress(epoch, total, metrics)

    weights = frontend.train_reference_cnn(data, epochs, seed, record)
    seconds = time.perf_counter() - start
    x = x_test if frontend.reference_layout == "NCHW" else x_test.transpose(0, 2, 3, 1)
    probs = frontend.run(frontend.reference_cnn(weights), {"x": np.ascontiguousarray(x)})[0]
    save_weights(Path(output), weights)
    del x_train, y_train
    return TrainResult(frontend.name, epochs, accuracy(probs, y_test), seconds, str(output), history)
