"""Front-end registry: names resolved to ``module:Class`` strings on demand, so nothing heavy is imported
until a framework is actually used."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from convkit.errors import FrameworkUnavailableError, UnknownFrameworkError
from convkit.frontends.base import ExportOptions, ExportResult, Frontend, LoadOptions

__all__ = [
    "FRONTENDS",
    "PLANNED",
    "ExportOptions",
    "ExportResult",
    "Frontend",
    "LoadOptions",
    "canonical_name",
    "get_frontend",
    "resolve_source",
]

FRONTENDS: dict[str, str] = {
    "torch": "convkit.frontends.torch:TorchFrontend",
    "tensorflow": "convkit.frontends.tensorflow:TensorFlowFrontend",
    "jax": "convkit.frontends.jax:JaxFrontend",
    "paddle": "convkit.frontends.paddle:PaddleFrontend",
    "keras-jax": "convkit.frontends.keras_backend:KerasJaxFrontend",
    "keras-torch": "convkit.frontends.keras_backend:KerasTorchFrontend",
    "mxnet": "convkit.frontends.mxnet:MXNetFrontend",
    "chainer": "convkit.frontends.chainer:ChainerFrontend",
    "caffe": "convkit.frontends.caffe:CaffeFrontend",
    "theano": "convkit.frontends.theano:TheanoFrontend",
}
ALIASES: dict[str, str] = {
    "pytorch": "torch",
    "keras": "tensorflow",
    "tf": "tensorflow",
    "flax": "jax",
    "paddlepaddle": "paddle",
    "gluon": "mxnet",
    "pytensor": "theano",
    "deeplearning4j": "dl4j",
}
PLANNED: dict[str, str] = {
    "dl4j": "blocked: needs Maven Central, which this machine cannot reach (DeepLearning4j's Java "
    "artifacts come only from there), and DL4J cannot export ONNX (only an unmerged pull request); the "
    "intended path is ONNX imported into SameDiff, checked against onnxruntime",
}
"""Frameworks named in the founding document with no front end yet: why, and the path intended for them."""


def canonical_name(name: str) -> str:
    """``keras`` -> ``tensorflow`` and the like.

    Raises:
        UnknownFrameworkError: no such framework (the message lists the choices).
        FrameworkUnavailableError: a framework convkit plans for but has no front end for (``dl4j``).
    """
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in PLANNED:
        raise FrameworkUnavailableError(f"there is no {key} front end yet: {PLANNED[key]}")
    if key not in FRONTENDS:
        choices = ", ".join(sorted([*FRONTENDS, *ALIASES]))
        raise UnknownFrameworkError(f"unknown framework {name!r}", f"choose one of: {choices}")
    return key


def load_frontend_class(name: str) -> Frontend:
    """The front end object for ``name`` without checking that its framework is installed."""
    module_name, _, class_name = FRONTENDS[canonical_name(name)].partition(":")
    frontend: Frontend = getattr(importlib.import_module(module_name), class_name)()
    return frontend


def get_frontend(name: str) -> Frontend:
    """The front end for ``name``, its framework importable.

    Raises:
        UnknownFrameworkError: no such front end.
        FrameworkUnavailableError: its framework is not installed; the message names the extra.
    """
    frontend = load_frontend_class(name)
    reason = frontend.is_available()
    if reason is not None:
        raise FrameworkUnavailableError(
            f"the {frontend.name} front end is unavailable: {reason}",
            install_hint(frontend),
        )
    return frontend


def install_hint(frontend: Frontend) -> str:
    """The command that makes ``frontend`` available: its own (``convkit env create paddle``) or the extra."""
    return getattr(frontend, "install_command", None) or f"pip install 'convkit[{frontend.extra}]'"


def resolve_source(source: str, framework: str | None) -> tuple[Frontend, Any]:
    """Pick the front end for ``source`` and, for ``module:factory`` sources, the object it made.

    With ``framework`` given, a factory object of another framework is a clear error; without it, the
    framework is inferred from the file type or the factory object's class.
    """
    from convkit.core.sources import framework_of, is_factory_source, load_factory

    wanted = canonical_name(framework) if framework is not None else None
    if is_factory_source(source):
        # NOTE: why the front end first: it sets its framework up quietly (TensorFlow prints at import)
        # before the user's factory imports the framework itself.
        chosen = get_frontend(wanted) if wanted is not None else None
        if chosen is not None and getattr(chosen, "isolated", False):
            # NOTE: why: an isolated front end's framework lives in its own environment; its worker imports
            # the factory there (importing it here would need the framework in this process).
            return chosen, None
        preloaded = load_factory(source)
        found = framework_of(preloaded)
        if wanted is None:
            if found is None:
                raise UnknownFrameworkError(
                    f"cannot tell which framework {type(preloaded).__name__} (from {source}) belongs to",
                    f"pass --framework ({', '.join(FRONTENDS)})",
                )
            return get_frontend(found), preloaded
        if found is not None and found != wanted:
            raise UnknownFrameworkError(
                f"{source} made a {found} model ({type(preloaded).__name__}), not a {wanted} one",
                f"use --framework {found}",
            )
        assert chosen is not None
        return chosen, preloaded
    if wanted is not None:
        return get_frontend(wanted), None
    path = Path(source)
    if not path.exists():
        from convkit.errors import InputFileError

        raise InputFileError(
            f"source {source} is neither an existing file nor a module:factory",
            "give a model file, path/to/file.py:factory or package.module:factory",
        )
    for name in FRONTENDS:
        if load_frontend_class(name).claims_path(path):
            return get_frontend(name), None
    raise UnknownFrameworkError(
        f"cannot tell which framework {source} belongs to", f"pass --framework ({', '.join(FRONTENDS)})"
    )
