"""The reference CNN in Flax NNX (see ``convkit.reference.cnn``): the module, and its optax training loop.

Flax is imported on first use only (``convkit --help`` must start without it): ``ReferenceCNN`` is built when
first looked up (``from convkit.frontends.jax.reference import ReferenceCNN`` works and imports Flax).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from convkit.errors import DataError
from convkit.frontends.jax._common import import_jax
from convkit.reference.cnn import SHAPES

# NOTE: why 32 and Adam at 1e-3: the recipe of the PyTorch and Keras front ends, so `convkit train` means the
# same thing in every framework (about 45 steps an epoch on the ~1,400 training digits).
TRAIN_BATCH_SIZE = 32
LEARNING_RATE = 1e-3
# NOTE: why pieces: evaluating a large held-out split at once would hold all its activations
EVAL_BATCH_SIZE = 512
_LAYERS = ("conv1", "conv2", "fc1", "fc2")


def _define_reference_cnn() -> type:
    """The ``ReferenceCNN`` class (``nnx.Module``), defined once Flax is imported."""
    import jax
    from flax import nnx

    class ReferenceCNN(nnx.Module):
        """The founding document's reference CNN: ``x`` (batch, 28, 28, 1) NHWC in, 10 probabilities out.

        Attribute names are the canonical weight prefixes (``conv1`` ...); kernels are Flax's
        ``(kh, kw, in, out)`` and ``(in, out)``, the channels-last layout of ``to_channels_last``.
        """

        def __init__(self, rngs: nnx.Rngs) -> None:
            # NOTE: why VALID: Flax convolutions pad to SAME by default; the reference CNN does not pad.
            self.conv1 = nnx.Conv(1, 32, (3, 3), padding="VALID", rngs=rngs)
            self.conv2 = nnx.Conv(32, 64, (3, 3), padding="VALID", rngs=rngs)
            self.fc1 = nnx.Linear(1600, 128, rngs=rngs)
            self.dropout = nnx.Dropout(0.5, rngs=rngs)
            self.fc2 = nnx.Linear(128, 10, rngs=rngs)

        def logits(self, x: jax.Array) -> jax.Array:
            """The scores before the softmax (what training's cross-entropy takes)."""
            # NOTE: why keywords for max_pool: jax2onnx replaces nnx.max_pool while it traces with a function
            # that takes the window and strides by keyword only.
            x = nnx.max_pool(nnx.relu(self.conv1(x)), window_shape=(2, 2), strides=(2, 2))
            x = nnx.max_pool(nnx.relu(self.conv2(x)), window_shape=(2, 2), strides=(2, 2))
            x = x.reshape(x.shape[0], -1)  # NHWC order, as fc1_to_nhwc expects
            return self.fc2(self.dropout(nnx.relu(self.fc1(x))))

        def __call__(self, x: jax.Array) -> jax.Array:
            """Class probabilities, ``(batch, 10)``."""
            return nnx.softmax(self.logits(x), axis=-1)

    ReferenceCNN.__module__ = __name__
    ReferenceCNN.__qualname__ = "ReferenceCNN"
    return ReferenceCNN


def reference_cnn_class() -> type:
    """The ``ReferenceCNN`` ``nnx.Module`` class (one class per process, so ``isinstance`` works)."""
    cls = globals().get("ReferenceCNN")
    if cls is None:
        cls = globals()["ReferenceCNN"] = _define_reference_cnn()
    return cls


def __getattr__(name: str) -> Any:
    """``ReferenceCNN``, defined (and Flax imported) on first access."""
    if name == "ReferenceCNN":
        return reference_cnn_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_reference_cnn(weights: Mapping[str, np.ndarray]) -> Any:
    """A ``ReferenceCNN`` in eval mode carrying canonical ``weights`` (PyTorch layout, converted here).

    Raises:
        DataError: a weight is missing or misshapen.
    """
    import jax.numpy as jnp
    from flax import nnx

    from convkit.reference.cnn import to_channels_last

    wrong = [
        name
        for name, shape in SHAPES.items()
        if name not in weights or tuple(np.shape(weights[name])) != shape
    ]
    if wrong:
        raise DataError(f"reference-CNN weights missing or misshapen: {', '.join(wrong)}")
    import_jax()
    channels_last = to_channels_last({name: np.asarray(weights[name], np.float32) for name in SHAPES})
    model = reference_cnn_class()(nnx.Rngs(0))
    for prefix in _LAYERS:
        layer = getattr(model, prefix)
        layer.kernel.set_value(jnp.asarray(channels_last[f"{prefix}.weight"]))
        layer.bias.set_value(jnp.asarray(channels_last[f"{prefix}.bias"]))
    model.eval()
    return model


def reference_weights(model: Any) -> dict[str, np.ndarray]:
    """A ``ReferenceCNN``'s weights as canonical float32 arrays, keyed as in ``convkit.reference.cnn``."""
    from convkit.reference.cnn import from_channels_last

    channels_last: dict[str, np.ndarray] = {}
    for prefix in _LAYERS:
        layer = getattr(model, prefix)
        channels_last[f"{prefix}.weight"] = np.asarray(layer.kernel.get_value(), np.float32)
        channels_last[f"{prefix}.bias"] = np.asarray(layer.bias.get_value(), np.float32)
    return {name: np.array(value, np.float32) for name, value in from_channels_last(channels_last).items()}


def train_reference_cnn(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    epochs: int,
    seed: int,
    progress: Callable[[int, int, dict[str, float]], None],
) -> dict[str, np.ndarray]:
    """Train a fresh ``ReferenceCNN`` with optax under ``nnx.jit`` and return its canonical weights.

    Adam (learning rate ``LEARNING_RATE``), softmax cross-entropy on the logits, shuffled mini-batches of
    ``TRAIN_BATCH_SIZE`` (the last one smaller), dropout active. Seeded: ``nnx.Rngs(seed)`` draws the initial
    weights and the dropout masks, NumPy's generator the shuffling, so one seed gives one set of weights.

    Args:
        data: ``(x_train, y_train, x_test, y_test)``: NCHW float32 images ``(N, 1, 28, 28)``, int labels.
        epochs: passes over the training images.
        seed: the random seed.
        progress: called after each epoch as ``progress(epoch, epochs, metrics)`` (1-based epoch) with
            ``loss`` and ``accuracy`` (means over the epoch's batches, dropout active, as Keras reports
            them) and ``val_accuracy`` (the held-out images, dropout off).

    Returns:
        Canonical weights (``convkit.reference.cnn.SHAPES``), float32.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import_jax()
    x_train, y_train, x_test, y_test = data
    images = jnp.asarray(np.ascontiguousarray(np.asarray(x_train, np.float32).transpose(0, 2, 3, 1)))
    labels = jnp.asarray(np.asarray(y_train, np.int32))
    test_images = np.ascontiguousarray(np.asarray(x_test, np.float32).transpose(0, 2, 3, 1))
    test_labels = np.asarray(y_test, np.int64)
    model = reference_cnn_class()(nnx.Rngs(params=seed, dropout=seed))
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)

    def step(model: Any, optimizer: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        def loss_fn(model: Any) -> tuple[jax.Array, jax.Array]:
            logits = model.logits(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss * len(y), (logits.argmax(-1) == y).sum()

    # NOTE: why cached_partial: it walks the module and optimizer graph once instead of at every call; plain
    # nnx.jit spent about as long on that as on the step itself here.
    train_step = nnx.cached_partial(nnx.jit(step), model, optimizer)

    @nnx.jit
    def predict(model: Any, x: jax.Array) -> jax.Array:
        return model.logits(x).argmax(-1)

    shuffle = np.random.default_rng(seed)
    count = max(len(x_train), 1)
    for epoch in range(1, epochs + 1):
        losses, hits = [], []
        order = shuffle.permutation(len(x_train))
        for start in range(0, len(x_train), TRAIN_BATCH_SIZE):
            batch = jnp.asarray(order[start : start + TRAIN_BATCH_SIZE])
            loss, correct = train_step(images[batch], labels[batch])
            losses.append(loss)
            hits.append(correct)
        # NOTE: why a view: it shares the trained arrays with dropout switched off, leaving the training
        # model (and the cached step's view of it) in training mode.
        evaluating = nnx.view(model, deterministic=True)
        predicted = [
            np.asarray(predict(evaluating, jnp.asarray(test_images[start : start + EVAL_BATCH_SIZE])))
            for start in range(0, len(test_images), EVAL_BATCH_SIZE)
        ]
        metrics = {
            "loss": float(sum(float(v) for v in losses)) / count,
            "accuracy": float(sum(int(v) for v in hits)) / count,
            "val_accuracy": float((np.concatenate(predicted) == test_labels).mean()) if predicted else 0.0,
        }
        progress(epoch, epochs, metrics)
    return reference_weights(model)
