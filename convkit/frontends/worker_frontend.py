"""What every front end that drives a worker process shares (``paddle``, ``keras-jax``, ``keras-torch``): a
handle on a model that lives in the worker, the ``describe`` request, input specs, and runs whose recent
results are remembered.

A subclass sets ``name`` and implements ``_call(request, workdir, verbose)``, which runs one request in its
worker (see ``convkit.workers.call_worker``) and returns the worker's result.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convkit.artifacts import save_npz_atomic
from convkit.frontends.base import LoadOptions
from convkit.inputs import InputSpec

# NOTE: why a few: the core runs the same inputs twice in a row (the export's example, then its check);
# each run otherwise costs a worker start.
REMEMBERED_RESULTS = 4


@dataclass
class WorkerModel:
    """A handle on a model that lives in the worker: what to load, never the model itself.

    Attributes:
        source: what the user gave (``file.py:factory``, a file or folder), or ``reference_cnn``.
        options: the load options (``verbose`` lets the worker's output through).
        spec: the worker's source description (``{"kind": "factory" | ..., ...}``).
    """

    source: str
    options: LoadOptions
    spec: dict[str, Any]
    _described: dict[str, Any] | None = field(default=None, repr=False)
    _outputs: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def is_factory(self) -> bool:
        return bool(self.spec["kind"] == "factory")


class WorkerFrontend:
    """The Frontend protocol's inputs and runs, for front ends whose framework runs in a worker."""

    name = ""
    isolated = True
    """Its framework runs in another process: ``module:factory`` sources are imported there, not here."""

    def _call(self, request: dict[str, Any], workdir: Path, verbose: bool) -> dict[str, Any]:
        raise NotImplementedError

    def _scratch(self) -> tempfile.TemporaryDirectory[str]:
        return tempfile.TemporaryDirectory(prefix=f"convkit-{self.name}-")

    def _describe(self, model: WorkerModel) -> dict[str, Any]:
        if model._described is None:
            with self._scratch() as folder:
                request = {"kind": "describe", "source": model.spec}
                model._described = self._call(request, Path(folder), model.options.verbose)
        return model._described

    def input_names(self, model: WorkerModel) -> list[str] | None:
        """A saved model's input names (asked of the worker once); ``None`` for factories.

        NOTE: why not ask for factories: that would cost a worker start on every export; the worker checks
        the names when it exports or runs, with the same message.
        """
        if model.is_factory:
            return None
        names = self._describe(model).get("input_names")
        return list(names) if names is not None else None

    def input_specs(self, model: WorkerModel) -> list[InputSpec] | None:
        """The shapes a saved model declares (unknown dims symbolic: ``batch`` first); ``None`` for
        factories (give ``--input``)."""
        if model.is_factory:
            return None
        declared = self._describe(model).get("input_specs")
        if not declared:
            return None
        specs = []
        for item in declared:
            dims: list[int | str] = [
                d if d is not None else ("batch" if axis == 0 else f"{item['name']}_dim{axis}")
                for axis, d in enumerate(item["dims"])
            ]
            specs.append(InputSpec(item["name"], dims, item["dtype"]))
        return specs

    def run(self, model: WorkerModel, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model natively in the worker; outputs flattened in order."""
        key = digest(inputs)
        if key in model._outputs:
            return [value.copy() for value in model._outputs[key]]
        with self._scratch() as folder:
            workdir = Path(folder)
            save_npz_atomic(workdir / "inputs.npz", inputs)
            request = {
                "kind": "run",
                "source": model.spec,
                "inputs": str(workdir / "inputs.npz"),
                "outputs": str(workdir / "outputs.npz"),
            }
            self._call(request, workdir, model.options.verbose)
            outputs = load_outputs(workdir / "outputs.npz")
        remember(model, key, outputs)
        return [value.copy() for value in outputs]

    def _export_in_worker(
        self,
        model: WorkerModel,
        specs: Sequence[InputSpec],
        example: Mapping[str, np.ndarray],
        opset: int | None,
        workdir: Path,
        verbose: bool,
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        """Ask the worker to export into ``workdir/exported.onnx``; returns its result and the framework's
        outputs for ``example`` (the reference the core checks the export against)."""
        save_npz_atomic(workdir / "example.npz", example)
        request = {
            "kind": "export",
            "source": model.spec,
            "specs": [{"name": s.name, "dims": list(s.dims), "dtype": s.dtype} for s in specs],
            "opset": opset,
            "onnx": str(workdir / "exported.onnx"),
            "example": str(workdir / "example.npz"),
            "reference": str(workdir / "reference.npz"),
        }
        result = self._call(request, workdir, verbose)
        return result, load_outputs(workdir / "reference.npz")


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """A key for a set of named arrays: names, dtypes, shapes and bytes."""
    sha = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        sha.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        sha.update(value.tobytes())
    return sha.hexdigest()


def load_outputs(path: Path) -> list[np.ndarray]:
    """The worker's ``output_0``, ``output_1`` ... in order (no pickles)."""
    with np.load(path, allow_pickle=False) as archive:
        return [archive[f"output_{k}"] for k in range(len(archive.files))]


def remember(model: WorkerModel, key: str, outputs: list[np.ndarray]) -> None:
    """Keep a few recent results: the same inputs again (the export's example) cost no worker start."""
    model._outputs[key] = outputs
    while len(model._outputs) > REMEMBERED_RESULTS:
        model._outputs.pop(next(iter(model._outputs)))


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
