"""The reference CNN in Apache MXNet Gluon (see ``convkit.reference.cnn``): the block, canonical weights in
and out, and its training loop in Gluon's own idiom.

Runs in the MXNet environment only: it imports mxnet and numpy, never convkit. The worker and
``fixtures/models/mxnet_models.py`` load this file by path, so both build the very same block.

Canonical weights use PyTorch's layout, which is Gluon's too: ``Conv2D`` kernels are ``(out, in, kh, kw)``
over NCHW feature maps, ``Dense`` kernels ``(out, in)``, and ``Flatten`` of an NCHW map reads it in
PyTorch's order, so weights go in and out as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# NOTE: why module-level here (framework imports live in functions elsewhere): this file runs only in the
# MXNet environment, never in the core process, and its class must subclass gluon.HybridBlock.
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

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
TRAIN_BATCH_SIZE = 32
LEARNING_RATE = 1e-3
EVAL_BATCH_SIZE = 512


class ReferenceCNN(gluon.HybridBlock):
    """The founding document's reference CNN: ``x`` (batch, 1, 28, 28) NCHW in, 10 probabilities out.

    Conv2D 32 3x3 + ReLU, MaxPool2D 2, Conv2D 64 3x3 + ReLU, MaxPool2D 2, Flatten, Dense 128 + ReLU,
    Dropout 0.5 (training only), Dense 10, softmax.
    """

    def __init__(self) -> None:
        # NOTE: why these prefixes: Gluon names a parameter prefix + "weight"; with "conv1." the MXNet names
        # (symbol files, ONNX initializers of a saved model) are the canonical ones, and stay the same for
        # every instance (Gluon's default prefixes count up: referencecnn0_, referencecnn1_ ...).
        super().__init__(prefix="")
        with self.name_scope():
            self.conv1 = nn.Conv2D(32, 3, in_channels=1, prefix="conv1.")
            self.conv2 = nn.Conv2D(64, 3, in_channels=32, prefix="conv2.")
            self.pool = nn.MaxPool2D(2, prefix="pool.")
            self.flatten = nn.Flatten(prefix="flatten.")
            self.fc1 = nn.Dense(128, in_units=1600, prefix="fc1.")
            self.dropout = nn.Dropout(0.5, prefix="dropout.")
            self.fc2 = nn.Dense(10, in_units=128, prefix="fc2.")

    def logits(self, F: Any, x: Any) -> Any:
        """The scores before the softmax (what training's cross-entropy takes)."""
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = self.dropout(F.relu(self.fc1(self.flatten(x))))
        return self.fc2(x)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        """Class probabilities, ``(batch, 10)``; ``F`` is ``mx.nd`` or ``mx.sym``."""
        return F.softmax(self.logits(F, x), axis=-1)


class _Logits(gluon.HybridBlock):
    """A ``ReferenceCNN``'s logits as a block of their own, sharing its parameters (for the training loss)."""

    def __init__(self, model: ReferenceCNN) -> None:
        super().__init__(prefix="logits.")
        self.model = model

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.model.logits(F, x)


def _parameters(model: ReferenceCNN) -> dict[str, Any]:
    return {name: param for name, param in model.collect_params().items() if name in SHAPES}


def build_reference_cnn(weights: Mapping[str, np.ndarray]) -> ReferenceCNN:
    """A ``ReferenceCNN`` carrying canonical ``weights`` (PyTorch layout, Gluon's too).

    Raises:
        ValueError: a weight is missing or misshapen.
    """
    wrong = [n for n, shape in SHAPES.items() if n not in weights or tuple(np.shape(weights[n])) != shape]
    if wrong:
        raise ValueError(f"reference-CNN weights missing or misshapen: {', '.join(wrong)}")
    model = ReferenceCNN()
    model.initialize(ctx=mx.cpu())
    for name, param in _parameters(model).items():
        param.set_data(mx.nd.array(np.ascontiguousarray(weights[name], np.float32)))
    return model


def canonical_weights(model: ReferenceCNN) -> dict[str, np.ndarray]:
    """A ``ReferenceCNN``'s weights as canonical float32 arrays."""
    return {
        name: np.asarray(param.data().asnumpy(), np.float32) for name, param in _parameters(model).items()
    }


def _accuracy(model: ReferenceCNN, images: np.ndarray, labels: np.ndarray) -> float:
    correct = 0
    for start in range(0, len(images), EVAL_BATCH_SIZE):
        probs = model(mx.nd.array(images[start : start + EVAL_BATCH_SIZE])).asnumpy()
        correct += int((probs.argmax(-1) == labels[start : start + EVAL_BATCH_SIZE]).sum())
    return correct / max(len(images), 1)


def train_reference_cnn(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    epochs: int,
    seed: int,
    progress: Callable[[int, int, dict[str, float]], None],
) -> dict[str, np.ndarray]:
    """Train a fresh ``ReferenceCNN`` the Gluon way and return its canonical weights.

    ``gluon.data.DataLoader`` over an ``ArrayDataset`` (shuffled mini-batches of 32), ``gluon.Trainer`` with
    Adam at 1e-3, ``SoftmaxCrossEntropyLoss`` on the logits under ``autograd.record()`` (dropout active),
    ``Xavier`` initial weights, the hybridized block. ``mx.random.seed(seed)`` seeds the initial weights and
    dropout, numpy's seed the loader's shuffling: one seed, one result.

    Args:
        data: ``(x_train, y_train, x_test, y_test)``: NCHW float32 images, int labels.
        epochs: passes over the training images.
        seed: the random seed.
        progress: after each epoch, ``progress(epoch, epochs, metrics)`` with ``loss`` and ``accuracy``
            (means over the epoch's batches, dropout active) and ``val_accuracy`` (held-out, no dropout).
    """
    x_train, y_train, x_test, y_test = data
    mx.random.seed(seed)
    np.random.seed(seed)  # NOTE: why: gluon.data's RandomSampler shuffles with numpy's global generator
    model = ReferenceCNN()
    model.initialize(mx.init.Xavier(), ctx=mx.cpu())
    logits = _Logits(model)
    logits.hybridize()
    model.hybridize()
    trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": LEARNING_RATE})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    dataset = gluon.data.ArrayDataset(
        mx.nd.array(np.ascontiguousarray(x_train, np.float32)), mx.nd.array(y_train.astype(np.float32))
    )
    loader = gluon.data.DataLoader(dataset, batch_size=TRAIN_BATCH_SIZE, shuffle=True)
    x_test = np.ascontiguousarray(x_test, np.float32)
    for epoch in range(1, epochs + 1):
        total_loss = 0.0
        correct = 0
        for images, labels in loader:
            with autograd.record():
                scores = logits(images)
                loss = loss_fn(scores, labels)
            loss.backward()
            trainer.step(images.shape[0])
            total_loss += float(loss.sum().asscalar())
            correct += int((scores.argmax(axis=1) == labels).sum().asscalar())
        metrics = {
            "loss": total_loss / max(len(x_train), 1),
            "accuracy": correct / max(len(x_train), 1),
            "val_accuracy": _accuracy(model, x_test, y_test),
        }
        progress(epoch, epochs, metrics)
    return canonical_weights(model)
