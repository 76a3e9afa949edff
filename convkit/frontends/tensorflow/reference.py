"""The reference CNN in Keras, for ``convkit matrix`` and ``convkit train``: built from canonical weights
(converted to channels-last) and trained with Keras' own ``compile``/``fit``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from convkit.frontends.tensorflow._common import import_tf

# NOTE: why 32: small batches suit the ~1,400 training digits (about 45 steps an epoch); the measured
# 10-epoch run reaches about 0.98 test accuracy in well under a minute on two cores.
TRAIN_BATCH_SIZE = 32
# canonical weight prefix -> Keras layer name; "probs" so that the ONNX output is called probs
_REFERENCE_LAYERS = {"conv1": "conv1", "conv2": "conv2", "fc1": "fc1", "fc2": "probs"}


def _reference_cnn_layers(keras: Any) -> Any:
    """The reference CNN's layer stack, freshly initialised: the one definition shared by
    :meth:`TensorFlowFrontend.reference_cnn`, training, and ``fixtures/models/keras_models.py``."""
    layers = keras.layers
    x = keras.Input((28, 28, 1), name="x")
    h = layers.Conv2D(32, 3, activation="relu", name="conv1")(x)
    h = layers.MaxPooling2D(2, name="pool1")(h)
    h = layers.Conv2D(64, 3, activation="relu", name="conv2")(h)
    h = layers.MaxPooling2D(2, name="pool2")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(128, activation="relu", name="fc1")(h)
    h = layers.Dropout(0.5, name="dropout")(h)
    probs = layers.Dense(10, activation="softmax", name="probs")(h)
    return keras.Model(x, probs, name="reference_cnn")


def _set_reference_weights(model: Any, weights: Mapping[str, np.ndarray]) -> None:
    """Load channels-last weights (``to_channels_last``'s keys) into the reference CNN's layers."""
    for prefix, layer in _REFERENCE_LAYERS.items():
        model.get_layer(layer).set_weights(
            [
                np.asarray(weights[f"{prefix}.weight"], np.float32),
                np.asarray(weights[f"{prefix}.bias"], np.float32),
            ]
        )


def _get_reference_weights(model: Any) -> dict[str, np.ndarray]:
    """The reference CNN's weights in channels-last layout, keyed like ``to_channels_last``'s output."""
    weights: dict[str, np.ndarray] = {}
    for prefix, layer in _REFERENCE_LAYERS.items():
        kernel, bias = model.get_layer(layer).get_weights()
        weights[f"{prefix}.weight"] = np.asarray(kernel, np.float32)
        weights[f"{prefix}.bias"] = np.asarray(bias, np.float32)
    return weights


def _nhwc(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 2, 3, 1))


def reference_cnn(weights: Mapping[str, np.ndarray]) -> Any:
    """The reference CNN as a functional Keras model carrying canonical ``weights``.

    Input ``x`` of shape ``(batch, 28, 28, 1)``, output ``probs`` of shape ``(batch, 10)``; the weights
    (PyTorch layout, see ``convkit.reference.cnn``) are converted with ``to_channels_last``.

    Args:
        weights: canonical weights (``convkit.reference.cnn``'s keys and layout).

    Returns:
        The ``keras.Model`` named ``reference_cnn``.
    """
    from convkit.reference.cnn import to_channels_last

    _, keras = import_tf()
    model = _reference_cnn_layers(keras)
    _set_reference_weights(model, to_channels_last(dict(weights)))
    return model


def train_reference_cnn(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    epochs: int,
    seed: int,
    progress: Callable[[int, int, dict[str, float]], None],
) -> dict[str, np.ndarray]:
    """Train the reference CNN from scratch with Keras' own ``compile``/``fit``.

    Adam (Keras' default learning rate), sparse categorical cross-entropy, batches of
    ``TRAIN_BATCH_SIZE``; the held-out split is the validation data, so each epoch reports
    ``loss``, ``accuracy`` and ``val_accuracy`` through ``progress``. Seeded with
    ``keras.utils.set_random_seed(seed)`` (initial weights, shuffling, dropout).

    Args:
        data: training images and labels, then held-out images and labels (images NCHW).
        epochs: how many passes over the training images.
        seed: the random seed.
        progress: called after each epoch with (epoch, epochs, metrics).

    Returns:
        Canonical weights (PyTorch layout), converted with ``from_channels_last``.
    """
    from convkit.reference.cnn import from_channels_last

    _, keras = import_tf()
    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    model = _reference_cnn_layers(keras)
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    callback: Any = keras.callbacks.Callback

    class Report(callback):
        """Hands each epoch's metrics to ``progress`` (1-based epoch)."""

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            metrics: dict[str, float] = {
                key: float(logs[key]) for key in ("loss", "accuracy", "val_accuracy") if key in logs
            }
            progress(epoch + 1, epochs, metrics)

    # NOTE: why no _Capture around fit: it would swallow what ``progress`` prints (the CLI's progress bar
    # writes to stderr); verbose=0 keeps Keras itself quiet.
    model.fit(
        _nhwc(x_train),
        np.asarray(y_train, np.int64),
        batch_size=TRAIN_BATCH_SIZE,
        epochs=epochs,
        validation_data=(_nhwc(x_test), np.asarray(y_test, np.int64)),
        shuffle=True,
        verbose=0,
        callbacks=[Report()],
    )
    return from_channels_last(_get_reference_weights(model))
