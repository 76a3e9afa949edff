"""The founding document's reference CNN, framework-free: canonical weights, layouts, and its data.

Input 1x28x28 grayscale; Conv 32 3x3 + ReLU; MaxPool 2x2; Conv 64 3x3 + ReLU; MaxPool 2x2; Flatten;
Dense 128 + ReLU; Dropout 0.5 (training only); Dense 10 + softmax. 5.26 MFLOP per sample.

Canonical weights (``.npz``) use PyTorch's layout: conv kernels ``(O, I, kh, kw)``, dense kernels
``(out, in)``, and the first dense layer reads the flattened NCHW feature map. Every framework converts from
and to this layout, so weights trained in one framework load in every other.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from convkit.core.artifacts import save_npz_atomic
from convkit.errors import DataError, InputFileError

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
DATA = Path(__file__).resolve().parent / "data"
"""What the package carries for the reference CNN and the demo (a wheel install has it too)."""
CANONICAL_WEIGHTS = DATA / "weights.npz"
DIGITS = DATA / "digits.npz"
TESTCASES = DATA / "testcases"
FEATURE_MAP = (64, 5, 5)  # channels, height, width after the second pooling


def load_weights(path: str | os.PathLike[str] = CANONICAL_WEIGHTS) -> dict[str, np.ndarray]:
    """Load and check canonical weights; a missing, extra or misshapen tensor is a ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"weights file {path} does not exist", "train one with `convkit train`")
    try:
        with np.load(path, allow_pickle=False) as archive:
            weights = {name: archive[name].astype(np.float32) for name in archive.files}
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read weights {path}: {exc}") from exc
    missing = sorted(set(SHAPES) - set(weights))
    extra = sorted(set(weights) - set(SHAPES))
    wrong = [
        f"{k} {weights[k].shape} (want {v})"
        for k, v in SHAPES.items()
        if k in weights and weights[k].shape != v
    ]
    if missing or extra or wrong:
        details = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(extra)}" if extra else "",
                f"wrong shape {', '.join(wrong)}" if wrong else "",
            )
            if part
        )
        raise DataError(f"{path} is not a reference-CNN weight file: {details}")
    return weights


def save_weights(path: str | os.PathLike[str], weights: dict[str, np.ndarray]) -> None:
    """Save canonical weights atomically (float32)."""
    save_npz_atomic(path, {name: np.asarray(weights[name], np.float32) for name in SHAPES})


def fc1_to_nhwc(weight: np.ndarray) -> np.ndarray:
    """First dense kernel ``(128, 1600)`` over NCHW-flattened features -> ``(1600, 128)`` over NHWC ones."""
    return weight.reshape(128, *FEATURE_MAP).transpose(2, 3, 1, 0).reshape(1600, 128)


def fc1_from_nhwc(kernel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`fc1_to_nhwc`."""
    c, h, w = FEATURE_MAP
    return kernel.reshape(h, w, c, 128).transpose(3, 2, 0, 1).reshape(128, 1600)


def to_channels_last(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical weights in Keras/TensorFlow layout: conv ``(kh, kw, I, O)``, dense ``(in, out)``."""
    return {
        "conv1.weight": weights["conv1.weight"].transpose(2, 3, 1, 0),
        "conv1.bias": weights["conv1.bias"],
        "conv2.weight": weights["conv2.weight"].transpose(2, 3, 1, 0),
        "conv2.bias": weights["conv2.bias"],
        "fc1.weight": fc1_to_nhwc(weights["fc1.weight"]),
        "fc1.bias": weights["fc1.bias"],
        "fc2.weight": weights["fc2.weight"].T,
        "fc2.bias": weights["fc2.bias"],
    }


def from_channels_last(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`to_channels_last`."""
    return {
        "conv1.weight": weights["conv1.weight"].transpose(3, 2, 0, 1),
        "conv1.bias": weights["conv1.bias"],
        "conv2.weight": weights["conv2.weight"].transpose(3, 2, 0, 1),
        "conv2.bias": weights["conv2.bias"],
        "fc1.weight": fc1_from_nhwc(weights["fc1.weight"]),
        "fc1.bias": weights["fc1.bias"],
        "fc2.weight": weights["fc2.weight"].T,
        "fc2.bias": weights["fc2.bias"],
    }


def load_digits(
    seed: int = 0, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bundled UCI digits as ``(x_train, y_train, x_test, y_test)``; images NCHW float32 in [0, 1].

    The 8x8 images are upsampled 3x (nearest) to 24x24 and padded to 28x28, the reference CNN's input.
    """
    with np.load(DIGITS, allow_pickle=False) as archive:
        images, labels = archive["images"], archive["labels"]
    big = np.kron(images.astype(np.float32) / 16.0, np.ones((3, 3), np.float32))
    x = np.pad(big, ((0, 0), (2, 2), (2, 2)))[:, None, :, :]
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return x[train], labels[train], x[test], labels[test]
