"""The reference CNN in Caffe (see ``convkit.reference.cnn``): its deploy prototxt and its blobs from
canonical weights.

Runs in the Caffe environment only and imports numpy alone, never convkit. The worker and
``fixtures/models/caffe_models.py`` load this file by path, so both build the very same net.

Canonical weights use PyTorch's layout, which is Caffe's: ``Convolution`` blobs are ``(out, in, kh, kw)``
and ``(out,)``, ``InnerProduct`` blobs ``(out, in)`` and ``(out,)``, and ``InnerProduct`` flattens the NCHW
blob in C, H, W order. The weights go in unchanged.

NOTE: why ``round_mode: FLOOR`` on both poolings: Caffe pools with ceil rounding by default, so 2x2/2 pooling
of the 11x11 map gives 6x6 (``ceil((11 - 2) / 2) + 1``), a 64*6*6 = 2304-wide ``fc1``, not the reference's
1600. ``round_mode: FLOOR`` (Caffe since 2018) pools 11x11 to 5x5 as every other framework does; caffe2onnx
honors it (``ceil_mode=0``), and the worker tells OpenCV the same with OpenCV's own spelling
(``ceil_mode: false``, see ``opencv_prototxt`` in ``worker.py``). 26x26 pools to 13x13 either way.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

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
LAYERS = ("conv1", "conv2", "fc1", "fc2")

PROTOTXT = """\
name: "reference_cnn"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }
layer {
  name: "conv1" type: "Convolution" bottom: "x" top: "conv1"
  convolution_param { num_output: 32 kernel_size: 3 }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR }
}
layer {
  name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 64 kernel_size: 3 }
}
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer {
  name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR }
}
layer { name: "fc1" type: "InnerProduct" bottom: "pool2" top: "fc1" inner_product_param { num_output: 128 } }
layer { name: "relu3" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "drop1" type: "Dropout" bottom: "fc1" top: "fc1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc2" top: "prob" }
"""


def reference_blobs(weights: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """The reference CNN's blobs by layer name (``{"conv1": [weight, bias], ...}``) from canonical weights.

    Raises:
        ValueError: a weight is missing or misshapen.
    """
    wrong = [n for n, shape in SHAPES.items() if n not in weights or tuple(np.shape(weights[n])) != shape]
    if wrong:
        raise ValueError(f"reference-CNN weights missing or misshapen: {', '.join(wrong)}")
    return {
        layer: [np.asarray(weights[f"{layer}.{part}"], np.float32) for part in ("weight", "bias")]
        for layer in LAYERS
    }
