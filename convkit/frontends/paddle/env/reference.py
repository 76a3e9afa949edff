"""The reference CNN in PaddlePaddle (see ``convkit.reference.cnn``): the layer, canonical weights in and out,
and its training loop in Paddle's own idiom.

Runs in the PaddlePaddle environment only: it imports paddle and numpy, never convkit. The worker and
``fixtures/models/paddle_models.py`` load this file by path, so both build the very same layer.

Canonical weights use PyTorch's layout. Paddle's ``Conv2D`` kernels are ``(out, in, kh, kw)`` like
PyTorch's, and its feature maps are NCHW, so the flatten order matches too; only ``Linear`` differs: Paddle
stores ``(in, out)``, so dense kernels are transposed on the way in and out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

# NOTE: why module-level here (TID253 bans it elsewhere): this file runs only in the PaddlePaddle
# environment, never in the core process, and its class must subclass paddle.nn.Layer.
import paddle
from paddle import nn
from paddle.nn import functional

SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (32, 1, 3, 3),
    "conv1.bias": (32,),
    "conv2.weight": (64, 32, 3, 3),
    "conv2.bias": (64,),
    "fc1.weight": (128, 1600),
    "fc1.bias": (128,),
    "fc2.weight": (10, 128),
    "fc2.bias": (10,),
}
DENSE = ("fc1.weight", "fc2.weight")
TRAIN_BATCH_SIZE = 32
LEARNING_RATE = 1e-3
EVAL_BATCH_SIZE = 512


class ReferenceCNN(nn.Layer):
    """The founding document's reference CNN: ``x`` (batch, 1, 28, 28) NCHW in, 10 probabilities out.

    Conv2D 32 3x3 + ReLU, MaxPool2D 2, Conv2D 64 3x3 + ReLU, MaxPool2D 2, Flatten, Linear 128 + ReLU,
    Dropout 0.5 (training only), Linear 10, softmax. Parameter names are the canonical ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2D(1, 32, 3)
        self.conv2 = nn.Conv2D(32, 64, 3)
        self.pool = nn.MaxPool2D(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(1600, 128)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, 10)

    def logits(self, x: paddle.Tensor) -> paddle.Tensor:
        """The scores before the softmax (what training's cross-entropy takes)."""
        x = self.pool(functional.relu(self.conv1(x)))
        x = self.pool(functional.relu(self.conv2(x)))
        x = self.dropout(functional.relu(self.fc1(self.flatten(x))))
        return self.fc2(x)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """Class probabilities, ``(batch, 10)``."""
        return functional.softmax(self.logits(x), axis=-1)


def build_reference_cnn(weights: Mapping[str, np.ndarray]) -> ReferenceCNN:
    """A ``ReferenceCNN`` in eval mode carrying canonical ``weights`` (PyTorch layout).

    Raises:
        ValueError: a weight is missing or misshapen.
    """
    wrong = [n for n, shape in SHAPES.items() if n not in weights or tuple(np.shape(weights[n])) != shape]
    if wrong:
        raise ValueError(f"reference-CNN weights missing or misshapen: {', '.join(wrong)}")
    model = ReferenceCNN()
    state = {
        name: paddle.to_tensor(np.ascontiguousarray(weights[name].T if name in DENSE else weights[name]))
        for name in SHAPES
    }
    missing, unexpected = model.set_state_dict(state)
    if missing or unexpected:
        raise ValueError(f"reference-CNN weights do not fit: missing {missing}, unexpected {unexpected}")
    model.eval()
    return model


def canonical_weights(model: ReferenceCNN) -> dict[str, np.ndarray]:
    """A ``ReferenceCNN``'s weights as canonical float32 arrays (dense kernels transposed back)."""
    state = model.state_dict()
    found = {}
    for name in SHAPES:
        value = np.asarray(state[name].numpy(), np.float32)
        found[name] = np.ascontiguousarray(value.T if name in DENSE else value)
    return found


def _accuracy(model: ReferenceCNN, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    correct = 0
    with paddle.no_grad():
        for start in range(0, len(images), EVAL_BATCH_SIZE):
            probs = model(paddle.to_tensor(images[start : start + EVAL_BATCH_SIZE]))
            correct += int((probs.numpy().argmax(-1) == labels[start : start + EVAL_BATCH_SIZE]).sum())
    return correct / max(len(images), 1)


def train_reference_cnn(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    epochs: int,
    seed: int,
    progress: Callable[[int, int, dict[str, float]], None],
) -> dict[str, np.ndarray]:
    """Train a fresh ``ReferenceCNN`` the Paddle way and return its canonical weights.

    ``paddle.io.DataLoader`` over a ``TensorDataset`` (shuffled mini-batches of 32), ``paddle.optimizer.Adam``
    at 1e-3, ``functional.cross_entropy`` on the logits, dropout active (train mode). ``paddle.seed(seed)``
    seeds the initial weights and dropout, numpy's seed the loader's shuffling: one seed, one result.

    Args:
        data: ``(x_train, y_train, x_test, y_test)``: NCHW float32 images, int labels.
        epochs: passes over the training images.
        seed: the random seed.
        progress: after each epoch, ``progress(epoch, epochs, metrics)`` with ``loss`` and ``accuracy``
            (means over the epoch's batches, dropout active) and ``val_accuracy`` (held-out, eval mode).
    """
    x_train, y_train, x_test, y_test = data
    paddle.seed(seed)
    np.random.seed(seed)  # NOTE: why: paddle.io's RandomSampler shuffles with numpy's global generator
    model = ReferenceCNN()
    optimizer = paddle.optimizer.Adam(learning_rate=LEARNING_RATE, parameters=model.parameters())
    dataset = paddle.io.TensorDataset(
        [
            paddle.to_tensor(np.ascontiguousarray(x_train, np.float32)),
            paddle.to_tensor(y_train.astype("int64")),
        ]
    )
    loader = paddle.io.DataLoader(dataset, batch_size=TRAIN_BATCH_SIZE, shuffle=True, num_workers=0)
    for epoch in range(1, epochs + 1):
        model.train()
        total_loss = 0.0
        correct = 0
        for images, labels in loader:
            logits = model.logits(images)
            loss = functional.cross_entropy(logits, labels)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            total_loss += float(loss) * len(labels)
            correct += int((logits.numpy().argmax(-1) == labels.numpy()).sum())
        metrics = {
            "loss": total_loss / max(len(x_train), 1),
            "accuracy": correct / max(len(x_train), 1),
            "val_accuracy": _accuracy(model, np.ascontiguousarray(x_test, np.float32), y_test),
        }
        progress(epoch, epochs, metrics)
    model.eval()
    return canonical_weights(model)
