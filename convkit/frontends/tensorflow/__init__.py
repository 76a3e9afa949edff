"""The TensorFlow/Keras front end: Keras models (``.keras``, ``.h5``, ``file.py:factory``) and SavedModel
folders, exported with tf2onnx and run natively for the reference outputs.

``TensorFlowFrontend`` is the front end convkit calls; its methods hand the work to one module per job:

- ``load``: which paths it claims, Keras files, SavedModel folders, ``--weights``, the declared inputs;
- ``export``: opsets, output names, and the errors an export raises (with the way out that works);
- ``convert``: tf2onnx step by step (trace, freeze captures into constants, inline XLA-marked functions,
  convert with the handlers tf2onnx lacks, such as ``Erfc``);
- ``dynamic``: which axes of ``--data`` stay open (those the model declares ``None``);
- ``layers``: Keras layers paired with ONNX values (``verify --localize``);
- ``reference``: the reference CNN and its training (``convkit matrix``, ``convkit train``);
- ``bench``: the native contenders for ``convkit bench``;
- ``_common``: what they share (importing TensorFlow, calling the model, flattening its outputs).

TensorFlow, Keras and tf2onnx are imported inside functions only, so that ``convkit --help`` never loads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.inputs import InputSpec
from convkit.frontends._quiet import Quiet
from convkit.frontends.base import ExportOptions, ExportResult, LayerOutput, LoadOptions
from convkit.frontends.tensorflow import _common, bench, export, layers, load, reference
from convkit.frontends.tensorflow._common import SavedModelSignature
from convkit.frontends.tensorflow.export import DEFAULT_OPSET, EXPORTER, MIN_OPSET
from convkit.frontends.tensorflow.export import _keras_output_names as _keras_output_names  # read by tests
from convkit.frontends.tensorflow.load import KERAS_SUFFIXES

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTER",
    "KERAS_SUFFIXES",
    "MIN_OPSET",
    "SavedModelSignature",
    "TensorFlowFrontend",
]


class TensorFlowFrontend:
    """Keras 3 models (functional, Sequential, subclassed; ``.keras``/``.h5`` files or factories) and
    SavedModel folders, exported with tf2onnx."""

    name = "tensorflow"

    def is_available(self) -> str | None:
        """``None`` when TensorFlow, Keras (on its TensorFlow backend) and tf2onnx import, else why not."""
        try:
            _, keras = _common.import_tf()
            with Quiet():
                import tf2onnx  # noqa: F401
        except Exception as exc:  # an ImportError, or a broken install raising anything at import
            return f"{type(exc).__name__}: {_common.first_line(exc)}"
        backend = keras.config.backend() if hasattr(keras, "config") else "tensorflow"
        if backend != "tensorflow":
            return f"Keras runs on its {backend} backend here; set KERAS_BACKEND=tensorflow"
        return None

    def versions(self) -> dict[str, str]:
        """Versions of ``tensorflow``, ``keras`` and ``tf2onnx``."""
        tf, keras = _common.import_tf()
        with Quiet():
            import tf2onnx
        return {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__}

    def claims_path(self, path: Path) -> bool:
        """``.keras``, ``.h5`` and ``.hdf5`` files, and folders holding a ``saved_model.pb``."""
        return load.claims_path(path)

    # ------------------------------------------------------------------ loading (load.py)

    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> Any:
        """Load a Keras model (``.keras``/``.h5``), a SavedModel folder or a factory's model for inference;
        ``load.load`` documents the arguments and errors."""
        return load.load(source, options, preloaded)

    def input_names(self, model: Any) -> list[str] | None:
        """The Keras input names (``None`` for a subclassed model, which declares none)."""
        return load.input_names(model)

    def input_specs(self, model: Any) -> list[InputSpec] | None:
        """Specs from the declared input shapes: the unknown first dimension is ``batch``, other unknown
        dimensions ``<input>_dim<axis>``; ``None`` when the model declares no shapes."""
        return load.input_specs(model)

    # ------------------------------------------------------------------ running (_common.py)

    def run(self, model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run in inference mode (``training=False``); outputs flattened in order (dict outputs in their
        key order). Raises ``DataError`` when the model rejects the inputs."""
        return _common.run(model, inputs)

    # ------------------------------------------------------------------ export (export.py)

    def export(
        self,
        model: Any,
        specs: Sequence[InputSpec],
        example: Mapping[str, np.ndarray],
        path: Path,
        options: ExportOptions,
    ) -> ExportResult:
        """Export with tf2onnx; inputs named and shaped after ``specs`` (string dims symbolic;
        ``dynamic_if_allowed`` axes symbolic where the model declares ``None``, see
        ``convkit.frontends.tensorflow.dynamic``), outputs named after the Keras outputs
        (``output``/``output_N`` where Keras has no names).

        Raises:
            UnsupportedModelError: an opset tf2onnx cannot write, or TensorFlow ops without ONNX equivalent.
            ExportError: tf2onnx failed; its last log lines are in the hint.
        """
        return export.export(model, specs, example, path, options)

    # ------------------------------------------------------------------ reference CNN (reference.py)

    # NOTE: why NHWC: Keras' Conv2D defaults to channels_last, the layout Keras users feed; the matrix and
    # `convkit train` transpose the NCHW digits for this front end.
    reference_layout = "NHWC"

    def reference_cnn(self, weights: Mapping[str, np.ndarray]) -> Any:
        """The reference CNN as a functional Keras model carrying canonical ``weights`` (see
        ``convkit.frontends.tensorflow.reference``)."""
        return reference.reference_cnn(weights)

    def train_reference_cnn(
        self,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        epochs: int,
        seed: int,
        progress: Callable[[int, int, dict[str, float]], None],
    ) -> dict[str, np.ndarray]:
        """Train the reference CNN with Keras' own ``compile``/``fit``; returns canonical weights (see
        ``convkit.frontends.tensorflow.reference``)."""
        return reference.train_reference_cnn(data, epochs, seed, progress)

    # ------------------------------------------------------------------ benchmark (bench.py)

    def benchmark_runners(self, model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
        """Zero-argument calls for ``convkit bench``: ``keras eager`` (``model(x, training=False)``) and
        ``keras tf.function`` (the same call in a graph, without XLA), each returning NumPy arrays (see
        ``convkit.frontends.tensorflow.bench``)."""
        return bench.benchmark_runners(model, inputs)

    # ------------------------------------------------------------------ layer outputs (layers.py)

    def layer_outputs(
        self, model: Any, onnx_model: Any, inputs: Mapping[str, np.ndarray]
    ) -> list[LayerOutput]:
        """Each Keras layer's activation paired with the ONNX value holding the same tensor (see
        ``convkit.frontends.tensorflow.layers``)."""
        return layers.layer_outputs(self, model, onnx_model, inputs)
