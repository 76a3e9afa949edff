"""The PyTorch front end: ``nn.Module`` factories, ``.pt2`` ExportedPrograms and TorchScript files, exported
with the torch.export-based exporter and, when it cannot capture a model, the TorchScript one.

``TorchFrontend`` is thin: each method hands its job to the module named for it.

- ``load``: sources, model files, checkpoints and ``--weights``;
- ``inputs``: the input names ``forward`` takes, the shapes an ExportedProgram recorded, and which dims the
  model lets be dynamic (``settle_dims``);
- ``export``: the exporters, their fallback, error messages and notes;
- ``bench``: the runners ``convkit bench`` times;
- ``layers`` (with ``layer_scopes`` and ``layer_shapes``): module activations paired with ONNX values,
  for ``verify --localize``;
- ``reference``: the reference CNN and its training loop;
- ``_common``: what several of them share (calling the model, flattening its outputs, NumPy <-> torch).

Only this module imports the others; they never import it. torch is imported inside functions only:
``convkit --help`` must start without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.inputs import InputSpec
from convkit.frontends.base import ExportOptions, ExportResult, LayerOutput, LoadOptions
from convkit.frontends.torch import bench, export, load
from convkit.frontends.torch import inputs as model_inputs
from convkit.frontends.torch._common import call_model, flatten_outputs, to_numpy


class TorchFrontend:
    """PyTorch: ``path/to/file.py:factory`` (an ``nn.Module``), ``.pt2`` (``torch.export.save``) and
    TorchScript (``torch.jit.save``) files; whole pickled modules only with ``unsafe_pickle``."""

    name = "torch"

    # ----------------------------------------------------------------------------------------------- setup
    def is_available(self) -> str | None:
        """``None`` when torch imports, else why it does not."""
        try:
            import torch  # noqa: F401
        except Exception as exc:
            return f"import torch failed: {type(exc).__name__}: {exc}"
        return None

    def versions(self) -> dict[str, str]:
        """torch and the ONNX packages its exporter uses."""
        import torch

        found = {"torch": str(torch.__version__)}
        for package in ("onnxscript", "onnx"):
            with contextlib.suppress(Exception):
                found[package] = str(__import__(package).__version__)
        return found

    def claims_path(self, path: Path) -> bool:
        """``.pt2``, ``.pt``, ``.pth`` and ``.ts`` files are PyTorch's."""
        return load.claims_path(path)

    # ------------------------------------------------------------------------------------------------ load
    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> Any:
        """Load ``source`` in eval mode: a factory's object, or a ``.pt2`` / TorchScript / pickled file.

        Returns an ``nn.Module``, a ``torch.jit.ScriptModule`` or a ``torch.export.ExportedProgram``.

        Raises:
            ModelLoadError: the file is corrupt, holds only weights, or ``--weights`` does not fit.
            UnsafeModelError: ``options.unsafe_pickle`` is off and the file is a pickle, or a ``.pt2``
                carrying something that could run code (see ``pt2_check``).
        """
        return load.load_model(source, options, preloaded)

    # -------------------------------------------------------------------------------------------- inputs
    def input_names(self, model: Any) -> list[str] | None:
        """``forward``'s required parameters (or the ExportedProgram's / TorchScript schema's inputs)."""
        return model_inputs.input_names(model)

    def input_specs(self, model: Any) -> list[InputSpec] | None:
        """Shapes an ExportedProgram recorded (its symbolic dims stay symbolic); ``None`` for modules."""
        return model_inputs.input_specs(model)

    # ------------------------------------------------------------------------------------------------ run
    def run(self, model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run eagerly (eval mode, no gradients) and flatten the outputs: tensors, sequences, dict values.

        Raises:
            DataError: the model raised (``call_model``); the message ends with the innermost line of the
                user's own code in the traceback (``(my_model.py:42)``), when there is one.
        """
        from convkit.core.sources import user_code_location
        from convkit.errors import DataError

        try:
            outputs = call_model(model, inputs)
        except DataError as exc:
            where = user_code_location(exc.__cause__) if exc.__cause__ is not None else ""
            if not where:
                raise
            raise DataError(exc.message + where, exc.hint, stage=exc.stage) from exc.__cause__
        return [to_numpy(value) for _, value in flatten_outputs(outputs)]

    def release(self, model: Any) -> None:
        """Free an ``nn.Module``'s parameters and buffers (``to_empty`` on the meta device, in place).

        NOTE: why in place rather than dropping references: the loader's frames and the exporter's objects
        (held in reference cycles until collected) still reach the module's tensors; emptying the module
        frees their memory now, whoever still refers to it.
        """
        import gc

        import torch

        if isinstance(model, torch.nn.Module) and not isinstance(model, torch.jit.ScriptModule):
            model.to_empty(device="meta")
        gc.collect()  # the exporter's objects hold the old tensors in reference cycles

    def benchmark_runners(self, model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Zero-argument callables for ``convkit bench``: eager PyTorch and, where it works, torch.compile."""
        return bench.benchmark_runners(model, inputs)

    # ------------------------------------------------------------------ reference CNN (convkit matrix, train)
    # NOTE: why NCHW: PyTorch's Conv2d is channels-first, and the canonical weights are in PyTorch's layout.
    reference_layout = "NCHW"

    def reference_cnn(self, weights: Mapping[str, np.ndarray]) -> Any:
        """The reference CNN (``convkit.frontends.torch.reference.ReferenceCNN``) in eval mode, carrying
        canonical ``weights``: input ``x`` (batch, 1, 28, 28), output the 10 class probabilities."""
        from convkit.frontends.torch.reference import build_reference_cnn

        return build_reference_cnn(weights)

    def train_reference_cnn(
        self,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        epochs: int,
        seed: int,
        progress: Callable[[int, int, dict[str, float]], None],
    ) -> dict[str, np.ndarray]:
        """Train the reference CNN from scratch with a PyTorch optimizer loop (Adam, mini-batches, dropout in
        train mode; see ``convkit.frontends.torch.reference.train_reference_cnn``) on ``(x_train, y_train,
        x_test, y_test)`` (NCHW images, int labels); ``progress(epoch, epochs, metrics)`` after each epoch;
        returns canonical weights."""
        from convkit.frontends.torch.reference import train_reference_cnn

        return train_reference_cnn(data, epochs, seed, progress)

    # ------------------------------------------------------------------ layer outputs (verify --localize)
    def layer_outputs(
        self, model: Any, onnx_model: Any, inputs: Mapping[str, np.ndarray]
    ) -> list[LayerOutput]:
        """Module activations (forward hooks, eval mode, no gradients) in execution order, each paired with
        the value of ``onnx_model`` computing the same tensor, found through the module scopes the exporter
        recorded (see ``convkit.frontends.torch.layers``). Functional results (``torch.relu``) are paired
        where the next module receives them, named after their node (``relu_2``). Modules without a clear
        counterpart are left out; ExportedPrograms, TorchScript modules and files without scopes give ``[]``.
        """
        from convkit.frontends.torch.layers import layer_outputs

        return layer_outputs(model, onnx_model, inputs)

    # --------------------------------------------------------------------------------------------- export
    def export(
        self,
        model: Any,
        specs: Sequence[InputSpec],
        example: Mapping[str, np.ndarray],
        path: Path,
        options: ExportOptions,
    ) -> ExportResult:
        """Export to one ONNX file at ``path``: inputs named after ``specs`` (string dims dynamic, and each
        ``dynamic_if_allowed`` axis dynamic where torch.export finds the model allows it: ``batch`` when it
        is the batch's, ``seq`` for token ids, else ``<input>_dim<axis>``; a note names those kept static),
        outputs named ``output`` / ``output_N`` (dict keys when the model returns a dict).

        The torch.export-based exporter runs first; when it cannot capture the model, the TorchScript
        exporter does, and a note says why. ``options.exporter`` forces one (``dynamo`` or ``torchscript``).

        Raises:
            ExportError: the exporter(s) failed, or a dimension meant to be dynamic is fixed by the model.
        """
        return export.export_model(model, specs, example, path, options)
