"""The reference CNN in PyTorch (see ``convkit.reference.cnn``): the module, and its training loop.

torch is imported on first use only (``convkit --help`` must start without it): ``ReferenceCNN`` is built
when first looked up (``from convkit.frontends.torch.reference import ReferenceCNN`` works and imports torch).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from convkit.errors import DataError
from convkit.reference.cnn import SHAPES

# NOTE: why 32 and Adam at 1e-3: the Keras front end trains with the same batch size and Keras' default
# learning rate, so `convkit train` means the same recipe in either framework (about 45 steps an epoch on
# the ~1,400 training digits); 10 epochs reach about 0.99 test accuracy in about 5 s on two cores.
TRAIN_BATCH_SIZE = 32
LEARNING_RATE = 1e-3
# NOTE: why pieces: evaluating a large held-out split at once would hold all its activations
EVAL_BATCH_SIZE = 512


def _define_reference_cnn() -> type:
    """The ``ReferenceCNN`` class (``nn.Module``), defined once torch is imported."""
    import torch
    from torch import nn

    class ReferenceCNN(nn.Module):
        """The founding document's reference CNN: ``x`` (batch, 1, 28, 28) NCHW in, 10 probabilities out.

        Parameter names are the canonical weight names (``conv1.weight`` ...). ReLU is functional and one
        ``pool`` module serves both poolings, as in ``fixtures/models/torch_models.py`` since its first
        version, so the exported graph is the one the bundled fixtures were checked with.
        """

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3)
            self.conv2 = nn.Conv2d(32, 64, 3)
            self.pool = nn.MaxPool2d(2)
            self.flatten = nn.Flatten()
            self.fc1 = nn.Linear(1600, 128)
            self.dropout = nn.Dropout(0.5)
            self.fc2 = nn.Linear(128, 10)

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            """The scores before the softmax (what training's cross-entropy takes)."""
            x = self.pool(torch.relu(self.conv1(x)))
            x = self.pool(torch.relu(self.conv2(x)))
            x = self.dropout(torch.relu(self.fc1(self.flatten(x))))
            return self.fc2(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """Class probabilities, ``(batch, 10)``."""
            return torch.softmax(self.logits(x), dim=-1)

    # NOTE: why: a class made inside a function pickles (torch.save(model)) only under its module-level name
    ReferenceCNN.__module__ = __name__
    ReferenceCNN.__qualname__ = "ReferenceCNN"
    return ReferenceCNN


def reference_cnn_class() -> type:
    """The ``ReferenceCNN`` ``nn.Module`` class (one class per process, so ``isinstance`` works)."""
    cls = globals().get("ReferenceCNN")
    if cls is None:
        cls = globals()["ReferenceCNN"] = _define_reference_cnn()
    return cls


def __getattr__(name: str) -> Any:
    """``ReferenceCNN``, defined (and torch imported) on first access."""
    if name == "ReferenceCNN":
        return reference_cnn_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_reference_cnn(weights: Mapping[str, np.ndarray]) -> Any:
    """A ``ReferenceCNN`` in eval mode carrying canonical ``weights`` (PyTorch layout already).

    Raises:
        DataError: a weight is missing or misshapen.
    """
    import torch

    wrong = [
        name
        for name, shape in SHAPES.items()
        if name not in weights or tuple(np.shape(weights[name])) != shape
    ]
    if wrong:
        raise DataError(f"reference-CNN weights missing or misshapen: {', '.join(wrong)}")
    model = reference_cnn_class()()
    state = {name: torch.from_numpy(np.array(weights[name], np.float32, copy=True)) for name in SHAPES}
    model.load_state_dict(state, strict=True)
    return model.eval()


def reference_weights(model: Any) -> dict[str, np.ndarray]:
    """A ``ReferenceCNN``'s weights as canonical float32 arrays, keyed as in ``convkit.reference.cnn``."""
    state = model.state_dict()
    return {name: state[name].detach().cpu().numpy().astype(np.float32, copy=True) for name in SHAPES}


def training_threads() -> int:
    """Threads for training: the CPUs this process may run on (cgroup/affinity aware), at most torch's own
    default.

    NOTE: why: torch sizes its pool from the machine's cores, which in a container or under ``taskset`` can
    be more than this process may use; oversubscribed threads slow small convolutions down severalfold.
    """
    import torch

    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    return max(1, min(allowed, torch.get_num_threads()))


def train_reference_cnn(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    epochs: int,
    seed: int,
    progress: Callable[[int, int, dict[str, float]], None],
) -> dict[str, np.ndarray]:
    """Train a fresh ``ReferenceCNN`` with a plain PyTorch loop and return its canonical weights.

    Adam (learning rate ``LEARNING_RATE``), cross-entropy on the logits, shuffled mini-batches of
    ``TRAIN_BATCH_SIZE``, dropout active (train mode). Seeded with ``torch.manual_seed(seed)`` (initial
    weights, dropout) and a generator of its own for the shuffling, so one seed gives one set of weights.

    Args:
        data: ``(x_train, y_train, x_test, y_test)``: NCHW float32 images ``(N, 1, 28, 28)``, int labels.
        epochs: passes over the training images.
        seed: the random seed.
        progress: called after each epoch as ``progress(epoch, epochs, metrics)`` (1-based epoch) with
            ``loss`` and ``accuracy`` (means over the epoch's batches, dropout active, as Keras reports
            them) and ``val_accuracy`` (the held-out images, eval mode).

    Returns:
        Canonical weights (``convkit.reference.cnn.SHAPES``), float32.
    """
    import torch
    from torch.nn import functional

    x_train, y_train, x_test, y_test = data
    images = torch.from_numpy(np.ascontiguousarray(x_train, np.float32))
    labels = torch.from_numpy(np.asarray(y_train, np.int64))
    test_images = torch.from_numpy(np.ascontiguousarray(x_test, np.float32))
    test_labels = torch.from_numpy(np.asarray(y_test, np.int64))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(training_threads())
    try:
        torch.manual_seed(seed)
        model = reference_cnn_class()()
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        shuffle = torch.Generator().manual_seed(seed)
        for epoch in range(1, epochs + 1):
            model.train()
            total_loss = 0.0
            correct = 0
            for batch in torch.randperm(len(images), generator=shuffle).split(TRAIN_BATCH_SIZE):
                logits = model.logits(images[batch])
                loss = functional.cross_entropy(logits, labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(batch)
                correct += int((logits.detach().argmax(-1) == labels[batch]).sum())
            metrics = {
                "loss": total_loss / max(len(images), 1),
                "accuracy": correct / max(len(images), 1),
                "val_accuracy": _accuracy(model, test_images, test_labels),
            }
            progress(epoch, epochs, metrics)
        return reference_weights(model.eval())
    finally:
        torch.set_num_threads(previous_threads)


def _accuracy(model: Any, images: Any, labels: Any) -> float:
    """The fraction of ``images`` classified as ``labels`` in eval mode (0.0 for no images)."""
    import torch

    if len(images) == 0:
        return 0.0
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), EVAL_BATCH_SIZE):
            logits = model.logits(images[start : start + EVAL_BATCH_SIZE])
            correct += int((logits.argmax(-1) == labels[start : start + EVAL_BATCH_SIZE]).sum())
    return correct / len(images)
