"""The Chainer front end: ``chainer.Chain`` factories, exported with onnx-chainer, all of it in the Chainer
environment (``convkit env create chainer``), driven as a worker.

NOTE: why a worker and not an import: Chainer 7.8.1, its last release, needs numpy<2 and onnx-chainer 1.6.0
declares onnx<1.7, while the core pins numpy 2 and onnx 1.23. The core keeps a handle (a ``WorkerModel``), a
description of what to load, and each job (run, export, build or train the reference CNN) is one request to
``convkit/frontends/chainer/env/worker.py`` run by the environment's Python. chainer is never imported here.

Sources: ``path/to/file.py:factory`` or ``package.module:factory`` with ``--framework chainer`` (the factory
is imported in the worker, so its framework cannot be inferred here), returning a ``chainer.Chain`` (or any
``chainer.Link``) whose ``forward`` takes the inputs; ``--weights`` is an ``.npz`` as
``chainer.serializers.save_npz`` writes it (keys ``conv1/W``), read without unpickling. Chainer has no saved
model format beyond such weights (the code is the model), so a factory is the only kind of source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from convkit.errors import InputFileError
from convkit.frontends._worker.frontend import TrainableEnvWorkerFrontend, WorkerModel
from convkit.frontends.base import LoadOptions


class ChainerFrontend(TrainableEnvWorkerFrontend):
    """Chainer through its own environment: factories (``--framework chainer``), exported with onnx-chainer
    and run by Chainer itself for the reference outputs."""

    name = "chainer"
    exporter = "onnx-chainer"
    version_dists: ClassVar[dict[str, str]] = {
        "chainer": "chainer",
        "onnx-chainer": "onnx-chainer",
        "onnx (chainer env)": "onnx",
    }
    # NOTE: why: Chainer warns at import about the missing cupy/ideep backends and onnx-chainer about its
    # experimental options; a quiet worker keeps them off the user's terminal (--verbose shows them).
    quiet_env: ClassVar[dict[str, str]] = {"PYTHONWARNINGS": "ignore"}
    # NOTE: why NCHW: Chainer's links are channels-first with PyTorch's kernel layouts, so canonical weights
    # go in unchanged, only renamed (conv1.weight -> conv1/W).
    reference_layout = "NCHW"

    def claims_path(self, path: Path) -> bool:
        """Never: Chainer saves no model files, only weights (an ``.npz`` that any framework could have
        written), so a path alone never says Chainer.

        NOTE: why not claim ``.npz``: weights without their code are no model; ``load`` says what to give.
        """
        return False

    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> WorkerModel:
        """A handle on the factory ``source``, checked here without starting Chainer (its file and
        ``--weights`` must exist). Chainer builds it in the worker at each request.

        Raises:
            InputFileError: ``source`` is no factory, or a file is missing.
        """
        from convkit.core.sources import is_factory_source

        if is_factory_source(source):
            return self.factory_model(source, options)
        weights = Path(source).suffix == ".npz"
        raise InputFileError(
            f"{source} is {'weights, not a model' if weights else 'no Chainer model'}: Chainer models are "
            "built by their code",
            "give the code as path/to/file.py:factory (a function or class returning a chainer.Chain)"
            + (f" with --weights {source}" if weights else ", and its weights with --weights weights.npz"),
        )
