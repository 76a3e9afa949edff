"""Loading a JAX model: the object a ``module:factory`` source made, checked to be a JAX model, with its
``--weights`` (an ``.npz``) loaded into an NNX module, put in eval mode.

JAX has no model file format of its own (checkpoints hold weights, not the computation), so there is no
file source. Flax is imported inside functions only.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

from convkit.errors import InputFileError, ModelLoadError, UnsupportedModelError
from convkit.frontends.base import LoadOptions
from convkit.frontends.jax._common import first_line, import_jax


def load_model(source: str, options: LoadOptions, preloaded: Any = None) -> Any:
    """The model a factory made, ready for inference: an NNX module in eval mode, or a JAX callable.

    Args:
        source: the ``module:factory`` text that made ``preloaded``.
        options: ``weights``, an ``.npz`` of the NNX module's parameters and batch statistics keyed by
            their dotted paths; ``verbose``.
        preloaded: the object the factory returned (``None`` for a file source, which is refused).

    Returns:
        ``preloaded`` itself, its weights loaded and, for an NNX module, in eval mode.

    Raises:
        InputFileError: ``source`` is a file (JAX has no model file format convkit can load).
        UnsupportedModelError: the factory made no JAX model (a Flax Linen module, an array, ...).
        ModelLoadError: ``--weights`` does not fit the module.
    """
    _, nnx = import_jax(options.verbose)
    if preloaded is None:
        raise InputFileError(
            f"the jax front end loads models from factories, and {source} is none",
            "give path/to/file.py:factory or package.module:factory returning a flax.nnx.Module or a "
            "JAX function",
        )
    model = check_model_object(preloaded, source)
    if options.weights is not None:
        if not isinstance(model, nnx.Module):
            raise ModelLoadError(
                f"--weights applies to Flax NNX modules; {source} made a plain function",
                "close the weights over in the factory (functools.partial(apply, params))",
            )
        load_weights(model, Path(options.weights))
    if isinstance(model, nnx.Module):
        # NOTE: why eval() in place, like model.eval() in PyTorch: Dropout turns deterministic and
        # BatchNorm uses its running averages, the inference behaviour an ONNX model has to reproduce.
        model.eval()
    return model


def check_model_object(obj: Any, source: str) -> Any:
    """``obj`` itself when it is a JAX model (an NNX module or a callable), else a clear error.

    Args:
        obj: what the factory returned.
        source: the source text, for the message.

    Returns:
        ``obj``.

    Raises:
        UnsupportedModelError: a Flax Linen module (no parameters), a class, or something not callable.
    """
    from flax import linen

    kind = f"{type(obj).__module__}.{type(obj).__name__}"
    if isinstance(obj, linen.Module):
        raise UnsupportedModelError(
            f"{source} made a Flax Linen module ({kind}), which carries no parameters",
            "return functools.partial(module.apply, variables) from the factory, or a flax.nnx.Module",
        )
    if not callable(obj) or inspect.isclass(obj):
        raise UnsupportedModelError(
            f"{source} made a {kind}, not a JAX model",
            "return a flax.nnx.Module, or a JAX function of the inputs with its parameters closed over",
        )
    return obj


def load_weights(model: Any, path: Path) -> None:
    """Load an ``.npz`` of parameters and batch statistics (keys: dotted paths) into an NNX module.

    NOTE: why ``.npz`` read with ``allow_pickle=False``: plain arrays by name carry no code; a Flax or orbax
    checkpoint restores into a module the user's code builds, which a factory can do itself.

    Args:
        model: the ``flax.nnx.Module``, updated in place.
        path: the ``.npz`` file, keyed like ``encoder.layers.0.kernel``.

    Raises:
        InputFileError: ``path`` does not exist.
        ModelLoadError: the file is unreadable, or its keys or shapes do not fit the module.
    """
    import jax.numpy as jnp
    from flax import nnx

    if not path.is_file():
        raise InputFileError(f"weights file {path} does not exist", "check the --weights path")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as exc:
        raise ModelLoadError(
            f"cannot read the weights {path}: {first_line(exc)}",
            "save them with numpy.savez(path, **{'layer.kernel': array, ...})",
        ) from exc
    flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    variables = {".".join(str(part) for part in key): variable for key, variable in flat}
    missing = sorted(set(variables) - set(arrays))
    unexpected = sorted(set(arrays) - set(variables))
    misshapen = [
        f"{name} {arrays[name].shape} (want {tuple(variables[name].shape)})"
        for name in sorted(set(arrays) & set(variables))
        if arrays[name].shape != tuple(variables[name].shape)
    ]
    if missing or unexpected or misshapen:
        problems = "; ".join(
            text
            for text in (
                f"missing {', '.join(missing[:5])}" if missing else "",
                f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
                f"wrong shape {', '.join(misshapen[:5])}" if misshapen else "",
            )
            if text
        )
        raise ModelLoadError(
            f"the weights {path} do not fit {type(model).__name__}: {problems}",
            "keys are the dotted paths of the module's parameters and batch statistics "
            f"(e.g. {next(iter(variables), 'layer.kernel')})",
        )
    for name, variable in variables.items():
        variable.set_value(jnp.asarray(arrays[name], dtype=variable.get_value().dtype))
    nnx.update(model, nnx.from_flat_state(flat))
