"""The JAX/Flax front end: Flax NNX modules and plain JAX functions from ``path/to/file.py:factory`` sources,
exported with jax2onnx and run natively (eagerly, on ``jax.Array`` inputs) for the reference outputs.

JAX, Flax and jax2onnx are imported inside functions only, so that ``convkit --help`` never loads them.

A source is a factory returning either a ``flax.nnx.Module`` (put in eval mode: Dropout deterministic,
BatchNorm on its running averages) or any JAX callable of its inputs, with its parameters closed over
(``functools.partial(apply, params)``, a ``jax.jit``-wrapped function). JAX has no model file format of its
own (checkpoints hold weights, not the computation), so there is no file source.

This file holds the front end, ``JaxFrontend``; its methods hand the work to the modules beside it:

- ``load``: the model a factory made, checked, its ``--weights`` loaded, in eval mode;
- ``export``: the jax2onnx export, its plugin registration and its error messages;
- ``dynamic``: which axes of ``--data`` stay open (those JAX traces symbolically);
- ``run``: the native calls, for the reference outputs and for ``convkit bench``;
- ``reference``: the reference CNN in Flax NNX and its training loop;
- ``_common``: what those share (importing JAX quietly, the input order, versions, an error's first line).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.inputs import InputSpec
from convkit.frontends.base import ExportOptions, ExportResult, LoadOptions
from convkit.frontends.jax import reference
from convkit.frontends.jax._common import first_line, import_jax, package_versions, positional_parameters
from convkit.frontends.jax.export import DEFAULT_OPSET, EXPORTER, MIN_OPSET, export_model
from convkit.frontends.jax.load import load_model
from convkit.frontends.jax.run import benchmark_runners, run_model

__all__ = ["DEFAULT_OPSET", "EXPORTER", "MIN_OPSET", "JaxFrontend"]


class JaxFrontend:
    """JAX: Flax NNX modules and plain JAX functions made by ``path/to/file.py:factory`` sources, exported
    with jax2onnx."""

    name = "jax"

    # ----------------------------------------------------------------------------------------------- setup
    def is_available(self) -> str | None:
        """``None`` when JAX and Flax import and jax2onnx is installed, else why not.

        NOTE: why jax2onnx is only looked up here: running and verifying never convert, and importing it
        costs half a second (sympy, through onnx_ir); ``export`` imports it and says so if that fails.
        """
        try:
            import_jax()
        except Exception as exc:  # an ImportError, or a broken install raising anything at import
            return f"{type(exc).__name__}: {first_line(exc)}"
        if importlib.util.find_spec("jax2onnx") is None:
            return "jax2onnx is not installed"
        return None

    def versions(self) -> dict[str, str]:
        """Versions of ``jax``, ``jaxlib``, ``flax`` and ``jax2onnx``."""
        return package_versions()

    def claims_path(self, path: Path) -> bool:
        """No file is JAX's: models come from factories (checkpoints hold weights, not the computation)."""
        return False

    # ------------------------------------------------------------------------------------------------ load
    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> Any:
        """The model a factory made, ready for inference: an NNX module in eval mode, or a JAX callable.

        Args:
            source: the ``module:factory`` text that made ``preloaded``.
            options: ``weights``, an ``.npz`` of the NNX module's parameters and batch statistics keyed by
                their dotted paths (``encoder.layers.0.kernel``), loaded without unpickling.
            preloaded: the object the factory returned.

        Raises:
            InputFileError: ``source`` is a file (JAX has no model file format convkit can load).
            UnsupportedModelError: the factory made no JAX model (a Flax Linen module, an array, ...).
            ModelLoadError: ``--weights`` does not fit the module.
        """
        return load_model(source, options, preloaded)

    # -------------------------------------------------------------------------------------------- inputs
    def input_names(self, model: Any) -> list[str] | None:
        """The required positional parameters of the call (``__call__`` for a module), when readable."""
        return positional_parameters(model)

    def input_specs(self, model: Any) -> list[InputSpec] | None:
        """``None``: a JAX function declares no input shapes (they come from ``--input`` or ``--data``)."""
        return None

    # ------------------------------------------------------------------------------------------------ run
    def run(self, model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Call the model eagerly on ``jax.Array`` inputs (positionally, in the model's parameter order) and
        flatten the outputs as ``jax.tree_util`` does (dicts by sorted key, ``None`` dropped), the order of
        the exported graph's outputs. Raises ``DataError`` when the model rejects the inputs."""
        return run_model(model, inputs)

    # --------------------------------------------------------------------------------------------- export
    def export(
        self,
        model: Any,
        specs: Sequence[InputSpec],
        example: Mapping[str, np.ndarray],
        path: Path,
        options: ExportOptions,
    ) -> ExportResult:
        """Export with jax2onnx to ``path``: inputs named and typed after ``specs`` (string dims symbolic,
        traced with JAX's shape polymorphism; ``dynamic_if_allowed`` axes symbolic where JAX traces them so,
        see ``convkit.frontends.jax.dynamic``), outputs named ``output`` / ``output_N`` (dict keys when the
        model returns a dict), in ``run``'s order.

        Raises:
            UnsupportedModelError: an opset out of range, or a JAX operation jax2onnx cannot convert.
            ExportError: tracing or conversion failed (a dimension meant to be symbolic that the model fixes,
                a model that does not take the inputs); jax2onnx's last log lines are in the hint.
        """
        return export_model(model, specs, example, path, options)

    # ------------------------------------------------------------------ reference CNN (convkit matrix, train)
    # NOTE: why NHWC: Flax's Conv is channels-last, the layout Flax users feed; `convkit matrix` and `convkit
    # train` transpose the NCHW digits for this front end, and the weights go through to_channels_last.
    reference_layout = "NHWC"

    def reference_cnn(self, weights: Mapping[str, np.ndarray]) -> Any:
        """The reference CNN as a Flax NNX module in eval mode carrying canonical ``weights`` (see
        ``convkit.frontends.jax.reference``): input ``x`` (batch, 28, 28, 1), output the 10 probabilities."""
        return reference.build_reference_cnn(weights)

    def train_reference_cnn(
        self,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        epochs: int,
        seed: int,
        progress: Callable[[int, int, dict[str, float]], None],
    ) -> dict[str, np.ndarray]:
        """Train the reference CNN with an optax loop under ``nnx.jit`` (Adam, mini-batches, dropout active;
        see ``convkit.frontends.jax.reference``); returns canonical weights."""
        return reference.train_reference_cnn(data, epochs, seed, progress)

    # ------------------------------------------------------------------ benchmark (convkit bench)
    def benchmark_runners(self, model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
        """Zero-argument calls for ``convkit bench``: ``jax eager`` (the model called op by op, as ``run``
        does) and ``jax.jit`` (the whole call compiled by XLA), each returning NumPy arrays (see
        ``convkit.frontends.jax.run``)."""
        return benchmark_runners(model, inputs)
