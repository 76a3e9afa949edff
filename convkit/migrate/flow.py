"""``convkit migrate``: write an ONNX model as a PyTorch module, then prove it computes what the model does.

OUT_DIR receives ``model.py`` (``Model`` and ``load()``), ``weights.pt`` (the state dict), ``__init__.py``,
``test_data_set_0/`` (inputs and the ONNX model's onnxruntime outputs) and ``report.json`` (the parity
report ``verify`` writes: onnxruntime against the migrated module, every symbolic dimension at two sizes).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from convkit.core.compare import ParityReport, Tolerance
from convkit.errors import ConvkitError

_MARKER = "written by `convkit migrate`"


@dataclass
class MigrateSummary:
    """Where the module went and how it compares with the ONNX model."""

    out_dir: Path
    report: ParityReport
    modules: list[str]
    """The ``torch.nn`` layer types the module uses (``nn.Conv2d`` ...), in order of first use."""


def migrate_model(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    to: str = "torch",
    tolerance: Tolerance | None = None,
    seed: int = 0,
    force: bool = False,
) -> MigrateSummary:
    """Write the ONNX model at ``path`` as a PyTorch package in ``out_dir`` and verify it.

    Raises:
        UnsupportedModelError: a node has no exact PyTorch mapping (nothing is written).
        ConvkitError: ``out_dir`` holds files an earlier migrate did not write (without ``force``).
    """
    from convkit.core.artifacts import atomic_dir, write_test_data_set, write_text_atomic
    from convkit.core.inputs import verification_data_sets
    from convkit.core.outputs import check_outputs
    from convkit.core.run import open_session
    from convkit.core.verify import specs_from_session, verify_native
    from convkit.frontends import get_frontend
    from convkit.graph.model import load_onnx, upgrade_opset
    from convkit.migrate.generate import generate
    from convkit.progress import step
    from convkit.report.files import to_json

    if to != "torch":
        raise ConvkitError(f"--to {to}: only torch is supported", "use --to torch")
    target = Path(out_dir)
    check_outputs({}, [path], folders={"-o": target})
    _check_target(target, force)
    model = load_onnx(path)
    proto = model.proto
    # NOTE: why opset 13 and later only: older ops carry their inputs as attributes and other semantics
    # (Softmax-1 flattens); onnx's version converter rewrites them, so the handlers know one spelling
    if model.opset < 13:
        proto = upgrade_opset(proto)
    step("writing the PyTorch module")
    generated = generate(proto, model.path.name)
    session = open_session(model)
    data_sets = verification_data_sets(specs_from_session(session.inputs), seed)
    frontend = _ArgumentNames(get_frontend("torch"), dict(generated.arguments))
    with atomic_dir(target) as staging:
        (staging / "model.py").write_text(generated.source, encoding="utf-8")
        (staging / "__init__.py").write_text(
            f'"""{model.path.name} as a PyTorch package ({_MARKER})."""\n\n'
            'from .model import Model, load\n\n__all__ = ["Model", "load"]\n',
            encoding="utf-8",
        )
        _save_weights(generated.state, staging / "weights.pt")
        module = _import(staging / "model.py").load(staging / "weights.pt")
        report = verify_native(
            model, cast(Any, frontend), module, data_sets=data_sets, tolerance=tolerance, options=None
        )
        report.reference = f"migrated module ({report.reference})"
        first = data_sets[0][1]
        outputs = open_session(model, None, first).run(first)
        write_test_data_set(staging, first, outputs)
        write_text_atomic(staging / "report.json", to_json(report))
    layers = sorted({line.split("= nn.")[1].split("(")[0] for line in generated.source.splitlines()
                     if "= nn." in line})  # fmt: skip
    return MigrateSummary(target, report, [f"nn.{name}" for name in layers])


class _ArgumentNames:
    """The torch front end, feeding the module by its ``forward`` argument names.

    NOTE: why: ONNX names (``0``, ``input.1``) are not Python identifiers; ``forward`` takes sanitized ones,
    while onnxruntime and the test data keep the model's own.
    """

    def __init__(self, frontend: Any, names: dict[str, str]) -> None:
        self._frontend = frontend
        self._names = names
        self.name = frontend.name

    def versions(self) -> dict[str, str]:
        return dict(self._frontend.versions())

    def run(self, model: Any, inputs: Any) -> list[Any]:
        return list(self._frontend.run(model, {self._names.get(k, k): v for k, v in inputs.items()}))


def _check_target(target: Path, force: bool) -> None:
    """Refuse to replace a folder that holds anything but an earlier migrate's output."""
    if not target.exists() or force:
        return
    if not target.is_dir():
        raise ConvkitError(f"-o {target} is not a folder", "give a new or empty folder for -o")
    entries = list(target.iterdir())
    init = target / "__init__.py"
    ours = init.is_file() and _MARKER in init.read_text(encoding="utf-8", errors="replace")
    if entries and not ours:
        raise ConvkitError(
            f"-o {target} holds files that convkit migrate did not write",
            "give a new folder, or --force to replace it",
        )


def _save_weights(state: dict[str, Any], path: Path) -> None:
    import numpy as np
    import torch

    tensors = {name: torch.from_numpy(np.array(array, copy=True)) for name, array in state.items()}
    torch.save(tensors, path)


def _import(path: Path) -> Any:
    """Import the generated ``model.py`` under a private name (never shadowing a user's module)."""
    name = f"_convkit_migrated_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConvkitError(f"cannot import the generated {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module
