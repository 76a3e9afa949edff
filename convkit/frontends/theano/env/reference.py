"""The reference CNN in PyTensor, Theano's maintained successor (see ``convkit.reference.cnn``): the graph
built from canonical weights, canonical weights out, and its training loop in Theano's own idiom.

Runs in the Theano environment only: it imports pytensor and numpy, never convkit. The worker and
``fixtures/models/theano_models.py`` load this file by path, so both build the very same graph.

A PyTensor model is a graph, not an object: ``build_reference_cnn`` returns ``{"inputs": [x], "outputs":
[probs]}``, the factory convention of ``theano/env/worker.py``, with the weights as shared variables named
after
the canonical weights (``conv1.weight`` ...). Feature maps are NCHW and kernels ``(out, in, kh, kw)`` as in
PyTorch, so canonical weights load as they are: dense layers compute ``dot(h, W.T)`` on the ``(out, in)``
matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# NOTE: why module-level imports: this file runs only in the Theano environment, never in the core process.
import pytensor
import pytensor.tensor as pt
from pytensor.tensor.special import log_softmax, softmax

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
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8
DROPOUT = 0.5
EVAL_BATCH_SIZE = 512


def conv2d(x: Any, kernels: Any) -> Any:
    """A valid 2-D cross-correlation of NCHW ``x`` with ``(out, in, kh, kw)`` ``kernels`` (static kh, kw):
    what Theano's ``conv2d(x, W, filter_flip=False)`` computed, and PyTorch's ``Conv2d`` does.

    NOTE: why im2col from slices and a tensordot: PyTensor 3 dropped Theano's ``nnet.conv2d`` (and its
    ``filter_flip``); its successor ``signal.convolve2d`` is a true convolution of single 2-D planes,
    broadcast over batch and channels image by image, about 200 times slower on a batch of 32 in the C
    backend. Shifted slices stacked on a new axis and contracted with the kernels in one ``tensordot`` (a
    matrix product) give the correlation itself, no kernel flip, at the speed of a GEMM.
    """
    if None in kernels.type.shape[2:]:
        raise ValueError("conv2d needs the kernels' spatial size in their static shape (shape=... on shared)")
    size_h, size_w = (int(d) for d in kernels.type.shape[2:])
    height = x.shape[2] - size_h + 1
    width = x.shape[3] - size_w + 1
    patches = pt.stack(
        [x[:, :, i : i + height, j : j + width] for i in range(size_h) for j in range(size_w)], axis=2
    )  # (batch, in, kh*kw, height, width)
    flat = kernels.reshape((kernels.shape[0], kernels.shape[1], size_h * size_w))
    return pt.tensordot(patches, flat, axes=[[1, 2], [1, 2]]).dimshuffle(0, 3, 1, 2)


def max_pool_2x2(x: Any) -> Any:
    """2x2 max pooling with stride 2 of NCHW ``x``, an odd last row or column dropped (floor), as a reshape
    and a max over the two window axes."""
    batch, channels, height, width = x.shape
    even = x[:, :, : (height // 2) * 2, : (width // 2) * 2]
    return even.reshape((batch, channels, height // 2, 2, width // 2, 2)).max(axis=(3, 5))


def _shared(weights: Mapping[str, np.ndarray]) -> dict[str, Any]:
    # NOTE: why a static shape: the converter and the C backend then know the kernel sizes and the dense
    # widths; only the batch stays symbolic.
    return {
        name: pytensor.shared(np.asarray(weights[name], np.float32), name=name, shape=SHAPES[name])
        for name in SHAPES
    }


def logits(x: Any, params: Mapping[str, Any], dropout: Callable[[Any], Any] | None = None) -> Any:
    """The scores before the softmax: conv 32 3x3 + ReLU, max pool 2, conv 64 3x3 + ReLU, max pool 2,
    flatten, dense 128 + ReLU, (dropout), dense 10."""
    h = pt.maximum(conv2d(x, params["conv1.weight"]) + params["conv1.bias"].dimshuffle("x", 0, "x", "x"), 0)
    h = max_pool_2x2(h)
    h = pt.maximum(conv2d(h, params["conv2.weight"]) + params["conv2.bias"].dimshuffle("x", 0, "x", "x"), 0)
    h = max_pool_2x2(h)
    h = h.reshape((h.shape[0], -1))
    h = pt.maximum(pt.dot(h, params["fc1.weight"].T) + params["fc1.bias"], 0)
    if dropout is not None:
        h = dropout(h)
    return pt.dot(h, params["fc2.weight"].T) + params["fc2.bias"]


def build_reference_cnn(weights: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
    """The reference CNN carrying canonical ``weights``: ``{"inputs": [x], "outputs": [probs]}``, ``x``
    float32 ``(batch, 1, 28, 28)`` NCHW, ``probs`` ``(batch, 10)``; the weights are shared variables named
    after the canonical names.

    Raises:
        ValueError: a weight is missing or misshapen.
    """
    wrong = [n for n, shape in SHAPES.items() if n not in weights or tuple(np.shape(weights[n])) != shape]
    if wrong:
        raise ValueError(f"reference-CNN weights missing or misshapen: {', '.join(wrong)}")
    x = pt.tensor("x", dtype="float32", shape=(None, 1, 28, 28))
    return {"inputs": [x], "outputs": [softmax(logits(x, _shared(weights)), axis=-1)]}


def _initial_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """PyTorch's default initialisation: uniform in +-1/sqrt(fan_in), weights and biases alike."""
    fan_in = {"conv1": 9, "conv2": 32 * 9, "fc1": 1600, "fc2": 128}
    return {
        name: rng.uniform(-1, 1, shape).astype(np.float32) / np.float32(np.sqrt(fan_in[name.split(".")[0]]))
        for name, shape in SHAPES.items()
    }


def _adam(loss: Any, params: list[Any]) -> list[tuple[Any, Any]]:
    """Adam's updates as pairs ``(shared variable, new value)`` for ``pytensor.function(updates=...)``."""
    # NOTE: why numpy float32 constants: a Python float is float64 to PyTensor (floatX), which would upcast
    # every update past the float32 shared variables it must replace.
    beta1, beta2 = (np.float32(b) for b in ADAM_BETAS)
    one, epsilon = np.float32(1), np.float32(ADAM_EPSILON)
    step = pytensor.shared(np.float32(0), name="adam.step")
    t = step + one
    scale = np.float32(LEARNING_RATE) * pt.sqrt(one - beta2**t) / (one - beta1**t)
    updates = [(step, t)]
    for param, grad in zip(params, pytensor.grad(loss, params), strict=True):
        zeros = np.zeros(param.get_value().shape, np.float32)
        m = pytensor.shared(zeros, name=f"adam.m.{param.name}")
        v = pytensor.shared(zeros.copy(), name=f"adam.v.{param.name}")
        m_next = beta1 * m + (one - beta1) * grad
        v_next = beta2 * v + (one - beta2) * pt.sqr(grad)
        updates += [(m, m_next), (v, v_next), (param, param - scale * m_next / (pt.sqrt(v_next) + epsilon))]
    return updates


def train_reference_cnn(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    epochs: int,
    seed: int,
    progress: Callable[[int, int, dict[str, float]], None],
    mode: Any = None,
) -> dict[str, np.ndarray]:
    """Train a fresh reference CNN the Theano way and return its canonical weights.

    One symbolic graph, ``pytensor.grad`` for the gradients, Adam at 1e-3 written as shared-variable
    updates of a compiled ``pytensor.function``, mini-batches of 32 in a shuffled order, dropout 0.5 from a
    shared random generator (its state an update of the same function). ``seed`` seeds the initial weights,
    the order and the dropout masks: one seed, one result.

    Args:
        data: ``(x_train, y_train, x_test, y_test)``: NCHW float32 images, int labels.
        epochs: passes over the training images.
        seed: the random seed.
        progress: after each epoch, ``progress(epoch, epochs, metrics)`` with ``loss`` and ``accuracy``
            (means over the epoch's batches, dropout active) and ``val_accuracy`` (held-out, no dropout).
        mode: the ``pytensor.function`` mode (the worker's; PyTensor's default when ``None``).
    """
    from pytensor.tensor.random.variable import shared_rng

    x_train, y_train, x_test, y_test = data
    rng = np.random.default_rng(seed)
    params = _shared(_initial_weights(rng))
    order = list(SHAPES)
    noise = shared_rng(seed=seed, name="dropout.rng")

    next_noise: list[Any] = []

    def dropout(h: Any) -> Any:
        # NOTE: why inverted dropout: scaling the kept units at training time leaves inference untouched
        following, keep = noise.bernoulli(1 - DROPOUT, size=h.shape)
        next_noise.append(following)
        return h * keep.astype("float32") / np.float32(1 - DROPOUT)

    x = pt.tensor("x", dtype="float32", shape=(None, 1, 28, 28))
    y = pt.vector("y", dtype="int64")
    scores = logits(x, params, dropout)
    loss = -pt.mean(log_softmax(scores, axis=-1)[pt.arange(y.shape[0]), y])
    correct = pt.sum(pt.eq(pt.argmax(scores, axis=-1), y))
    updates = [*_adam(loss, [params[n] for n in order]), (noise, next_noise[0])]
    step = pytensor.function([x, y], [loss, correct], updates=updates, mode=mode)
    predict = pytensor.function([x], pt.argmax(logits(x, params), axis=-1), mode=mode)

    images = np.ascontiguousarray(x_train, np.float32)
    labels = np.asarray(y_train, np.int64)
    for epoch in range(1, epochs + 1):
        total_loss = 0.0
        total_correct = 0
        shuffled = rng.permutation(len(images))
        for start in range(0, len(images), TRAIN_BATCH_SIZE):
            batch = shuffled[start : start + TRAIN_BATCH_SIZE]
            batch_loss, batch_correct = step(images[batch], labels[batch])
            total_loss += float(batch_loss) * len(batch)
            total_correct += int(batch_correct)
        held_out = np.ascontiguousarray(x_test, np.float32)
        predicted = np.concatenate(
            [predict(held_out[i : i + EVAL_BATCH_SIZE]) for i in range(0, len(held_out), EVAL_BATCH_SIZE)]
        )
        metrics = {
            "loss": total_loss / max(len(images), 1),
            "accuracy": total_correct / max(len(images), 1),
            "val_accuracy": float((predicted == np.asarray(y_test)).mean()) if len(held_out) else 0.0,
        }
        progress(epoch, epochs, metrics)
    return canonical_weights(params)


def canonical_weights(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The shared variables' values as canonical float32 arrays (already in PyTorch's layout)."""
    return {name: np.asarray(params[name].get_value(), np.float32) for name in SHAPES}
