"""The reference CNN in Chainer (see ``convkit.reference.cnn``): the chain, canonical weights in and out, and
its training loop in Chainer's own idiom.

Runs in the Chainer environment only: it imports chainer and numpy, never convkit. The worker and
``fixtures/models/chainer_models.py`` load this file by path, so both build the very same chain; the worker
also names ``ReferenceCNN`` as the factory of the reference CNN's source, with its weights in Chainer's own
``save_npz`` format.

Canonical weights use PyTorch's layout, which is Chainer's too: ``L.Convolution2D.W`` is
``(out, in, kh, kw)``, ``L.Linear.W`` is ``(out, in)`` and feature maps are NCHW, so only the names change
(``conv1.weight`` <-> ``conv1/W``, the key ``chainer.serializers.save_npz`` writes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

# NOTE: why module-level here: this file runs only in the Chainer environment, never in the core process,
# and its class must subclass chainer.Chain. F and L are Chainer's own idiom for its functions and links.
import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from chainer.dataset import concat_examples
from chainer.iterators import SerialIterator
from chainer.iterators.order_samplers import ShuffleOrderSampler

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


def chainer_key(canonical: str) -> str:
    """``conv1.weight`` -> ``conv1/W``: the canonical name as ``save_npz`` keys the parameter."""
    link, kind = canonical.split(".")
    return f"{link}/{'W' if kind == 'weight' else 'b'}"


class ReferenceCNN(chainer.Chain):
    """The founding document's reference CNN: ``x`` (batch, 1, 28, 28) NCHW in, 10 probabilities out.

    Convolution2D 32 3x3 + ReLU, max pooling 2, Convolution2D 64 3x3 + ReLU, max pooling 2, Linear 128 +
    ReLU (Linear flattens NCHW maps itself), dropout 0.5 (only with ``chainer.config.train``), Linear 10,
    softmax. Links are named after the canonical weights.
    """

    def __init__(self) -> None:
        super().__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(1, 32, 3)
            self.conv2 = L.Convolution2D(32, 64, 3)
            self.fc1 = L.Linear(1600, 128)
            self.fc2 = L.Linear(128, 10)

    def logits(self, x: chainer.Variable) -> chainer.Variable:
        """The scores before the softmax (what training's cross-entropy takes)."""
        # NOTE: why cover_all=False: Chainer's max pooling defaults to cover_all=True, which adds a partial
        # window at the edge (11x11 -> 6x6, not 5x5); the reference CNN floors like every other framework.
        h = F.max_pooling_2d(F.relu(self.conv1(x)), 2, cover_all=False)
        h = F.max_pooling_2d(F.relu(self.conv2(h)), 2, cover_all=False)
        h = F.dropout(F.relu(self.fc1(h)), 0.5)
        return self.fc2(h)

    def forward(self, x: chainer.Variable) -> chainer.Variable:
        """Class probabilities, ``(batch, 10)``."""
        return F.softmax(self.logits(x), axis=-1)


def build_reference_cnn(weights: Mapping[str, np.ndarray]) -> ReferenceCNN:
    """A ``ReferenceCNN`` carrying canonical ``weights`` (PyTorch layout, which is Chainer's).

    Raises:
        ValueError: a weight is missing or misshapen.
    """
    wrong = [n for n, shape in SHAPES.items() if n not in weights or tuple(np.shape(weights[n])) != shape]
    if wrong:
        raise ValueError(f"reference-CNN weights missing or misshapen: {', '.join(wrong)}")
    model = ReferenceCNN()
    params = dict(model.namedparams())
    for name in SHAPES:
        params[f"/{chainer_key(name)}"].array[...] = np.asarray(weights[name], np.float32)
    return model


def chainer_weights(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical ``weights`` keyed as ``chainer.serializers.save_npz`` keys a ``ReferenceCNN``."""
    return {chainer_key(name): np.asarray(weights[name], np.float32) for name in SHAPES}


def canonical_weights(model: ReferenceCNN) -> dict[str, np.ndarray]:
    """A ``ReferenceCNN``'s weights as canonical float32 arrays."""
    params = dict(model.namedparams())
    return {name: np.array(params[f"/{chainer_key(name)}"].array, np.float32) for name in SHAPES}


def _accuracy(model: ReferenceCNN, images: np.ndarray, labels: np.ndarray) -> float:
    correct = 0
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for start in range(0, len(images), EVAL_BATCH_SIZE):
            probs = model(images[start : start + EVAL_BATCH_SIZE]).array
            correct += int((probs.argmax(-1) == labels[start : start + EVAL_BATCH_SIZE]).sum())
    return correct / max(len(images), 1)


def train_reference_cnn(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    epochs: int,
    seed: int,
    progress: Callable[[int, int, dict[str, float]], None],
) -> dict[str, np.ndarray]:
    """Train a fresh ``ReferenceCNN`` the Chainer way and return its canonical weights.

    A ``SerialIterator`` over a ``TupleDataset`` (shuffled mini-batches of 32, ``concat_examples``),
    ``chainer.optimizers.Adam`` at ``alpha=1e-3``, ``F.softmax_cross_entropy`` on the logits under
    ``chainer.using_config("train", True)`` (dropout active), then ``cleargrads``/``backward``/``update``.

    NOTE: why numpy's global seed: on the CPU, Chainer's initializers and dropout masks draw from it; the
    iterator shuffles with a ``RandomState`` of the same seed. One seed, one result.

    Args:
        data: ``(x_train, y_train, x_test, y_test)``: NCHW float32 images, int labels.
        epochs: passes over the training images.
        seed: the random seed.
        progress: after each epoch, ``progress(epoch, epochs, metrics)`` with ``loss`` and ``accuracy``
            (means over the epoch's batches, dropout active; the batch that ends an epoch may take its
            last images from the next one, as ``SerialIterator`` does) and ``val_accuracy`` (held-out,
            eval mode).
    """
    x_train, y_train, x_test, y_test = data
    np.random.seed(seed)
    model = ReferenceCNN()
    optimizer = chainer.optimizers.Adam(alpha=LEARNING_RATE)
    optimizer.setup(model)
    dataset = chainer.datasets.TupleDataset(
        np.ascontiguousarray(x_train, np.float32), np.asarray(y_train, np.int32)
    )
    order = ShuffleOrderSampler(np.random.RandomState(seed))
    iterator = SerialIterator(dataset, TRAIN_BATCH_SIZE, repeat=True, order_sampler=order)
    total_loss, correct, seen = 0.0, 0, 0
    while iterator.epoch < epochs:
        images, labels = concat_examples(iterator.next())
        with chainer.using_config("train", True):
            logits = model.logits(images)
            loss = F.softmax_cross_entropy(logits, labels)
        model.cleargrads()
        loss.backward()
        optimizer.update()
        total_loss += float(loss.array) * len(labels)
        correct += int((logits.array.argmax(-1) == labels).sum())
        seen += len(labels)
        if iterator.is_new_epoch:
            metrics = {
                "loss": total_loss / seen,
                "accuracy": correct / seen,
                "val_accuracy": _accuracy(model, np.ascontiguousarray(x_test, np.float32), y_test),
            }
            progress(iterator.epoch, epochs, metrics)
            total_loss, correct, seen = 0.0, 0, 0
    return canonical_weights(model)
