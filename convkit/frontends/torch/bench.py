"""The runners ``convkit bench`` times for a PyTorch model: eager PyTorch and, where it works,
torch.compile."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from convkit.frontends._quiet import Quiet
from convkit.frontends.torch._common import call_arguments, callable_model


def benchmark_runners(model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Zero-argument callables, by name, each running ``model`` on ``inputs`` once without gradients.

    Args:
        model: an ``nn.Module``, a ``torch.jit.ScriptModule`` or a ``torch.export.ExportedProgram``.
        inputs: the inputs by name.

    Returns:
        ``torch eager`` always; ``torch.compile`` for a module torch.compile handles (compiled here).
    """
    import torch

    args, kwargs = call_arguments(model, inputs)
    target = callable_model(model)

    def eager() -> Any:
        with torch.no_grad():
            return target(*args, **kwargs)

    runners: dict[str, Any] = {"torch eager": eager}
    if isinstance(target, torch.nn.Module) and not isinstance(target, torch.jit.ScriptModule):
        compiled = torch.compile(target)

        def run_compiled() -> Any:
            with torch.no_grad():
                return compiled(*args, **kwargs)

        # NOTE: why compile here: the first call compiles (seconds to minutes); a model torch.compile
        # cannot handle is left out instead of failing the whole benchmark.
        try:
            with Quiet(False):
                run_compiled()
            runners["torch.compile"] = run_compiled
        except Exception:
            pass
    return runners
