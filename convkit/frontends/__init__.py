"""The front-end registry: one ``FrontendInfo`` per framework, and everything derived from it.

A framework's identity is written here once: its name, aliases, the packages whose objects belong to it,
the pip extra or framework environment that installs it and what computes its reference outputs. The
front-end classes are named as ``module:Class`` strings and imported on demand, so nothing heavy (no
framework, not even numpy) is imported until a framework is actually used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convkit.errors import FrameworkUnavailableError, UnknownFrameworkError
from convkit.frontends.base import (
    Benchmarkable,
    ExportOptions,
    ExportResult,
    Frontend,
    HasReferenceCNN,
    Isolated,
    LayerPairing,
    LoadOptions,
    Releasable,
    Trainable,
)

__all__ = [
    "ALIASES",
    "FRONTENDS",
    "PACKAGE_FRAMEWORK",
    "PLANNED",
    "REGISTRY",
    "Benchmarkable",
    "ExportOptions",
    "ExportResult",
    "Frontend",
    "FrontendInfo",
    "HasReferenceCNN",
    "Isolated",
    "LayerPairing",
    "LoadOptions",
    "Releasable",
    "Trainable",
    "canonical_name",
    "framework_of",
    "frontend_info",
    "get_frontend",
    "install_hint",
    "resolve_source",
]


@dataclass(frozen=True)
class FrontendInfo:
    """One framework as convkit knows it.

    Attributes:
        name: the canonical name (``--framework``, reports, ``frontends/<name>/``).
        entry: the front-end class, ``module:Class``.
        aliases: other names users type (``pytorch``).
        packages: top-level packages whose objects belong to this framework, so that a factory's model tells
            its framework (``flax`` and ``jaxlib`` for jax).
        extra: the pip extra that installs the framework (``pip install 'convkit[torch]'``).
        env: the framework environment it runs in instead (``convkit env create paddle``).
        native_runner: what computes the reference outputs when it is not the framework itself (Caffe's
            nets run in OpenCV; Theano's successor is PyTensor); reports name it.
        cannot_train: why ``convkit train`` cannot train here, where it cannot.
    """

    name: str
    entry: str
    aliases: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    extra: str | None = None
    env: str | None = None
    native_runner: str | None = None
    cannot_train: str | None = None

    @property
    def install_command(self) -> str:
        """The command that makes the framework available."""
        return f"convkit env create {self.env}" if self.env else f"pip install 'convkit[{self.extra}]'"


REGISTRY: tuple[FrontendInfo, ...] = (
    FrontendInfo(
        "torch",
        "convkit.frontends.torch:TorchFrontend",
        aliases=("pytorch",),
        packages=("torch",),
        extra="torch",
    ),
    FrontendInfo(
        "tensorflow",
        "convkit.frontends.tensorflow:TensorFlowFrontend",
        aliases=("keras", "tf"),
        packages=("tensorflow", "keras", "tf_keras"),
        extra="tensorflow",
    ),
    FrontendInfo(
        "jax",
        "convkit.frontends.jax:JaxFrontend",
        aliases=("flax",),
        # NOTE: why jaxlib too: a jax.jit-wrapped function is a jaxlib object
        packages=("jax", "flax", "jaxlib"),
        extra="jax",
    ),
    FrontendInfo(
        "paddle",
        "convkit.frontends.paddle:PaddleFrontend",
        aliases=("paddlepaddle",),
        env="paddle",
    ),
    FrontendInfo("keras-jax", "convkit.frontends.keras_backend:KerasJaxFrontend", extra="jax"),
    FrontendInfo("keras-torch", "convkit.frontends.keras_backend:KerasTorchFrontend", extra="torch"),
    FrontendInfo(
        "mxnet",
        "convkit.frontends.mxnet:MXNetFrontend",
        aliases=("gluon",),
        env="mxnet",
    ),
    FrontendInfo(
        "chainer",
        "convkit.frontends.chainer:ChainerFrontend",
        env="chainer",
    ),
    FrontendInfo(
        "caffe",
        "convkit.frontends.caffe:CaffeFrontend",
        env="caffe",
        native_runner="opencv",
        cannot_train=(
            "Caffe itself cannot be installed (no package for Python 3.11); convkit converts Caffe nets with "
            "caffe2onnx and runs them with OpenCV, neither of which trains"
        ),
    ),
    FrontendInfo(
        "theano",
        "convkit.frontends.theano:TheanoFrontend",
        aliases=("pytensor",),
        env="theano",
        native_runner="pytensor",
    ),
)
PLANNED: dict[str, str] = {
    "dl4j": "blocked: needs Maven Central, which this machine cannot reach (DeepLearning4j's Java "
    "artifacts come only from there), and DL4J cannot export ONNX (only an unmerged pull request); the "
    "intended path is ONNX imported into SameDiff, checked against onnxruntime",
}
"""Frameworks named in the founding document with no front end yet: why, and the path intended for them."""
_PLANNED_ALIASES = {"deeplearning4j": "dl4j"}

_BY_NAME = {info.name: info for info in REGISTRY}
FRONTENDS: dict[str, str] = {info.name: info.entry for info in REGISTRY}
ALIASES: dict[str, str] = {alias: info.name for info in REGISTRY for alias in info.aliases}
PACKAGE_FRAMEWORK: dict[str, str] = {package: info.name for info in REGISTRY for package in info.packages}


def framework_of(obj: Any) -> str | None:
    """The front end whose model class ``obj`` is, judged by the packages in its class hierarchy."""
    for cls in type(obj).__mro__:
        top = cls.__module__.split(".")[0]
        if top in PACKAGE_FRAMEWORK:
            return PACKAGE_FRAMEWORK[top]
    return None


def frontend_info(name: str) -> FrontendInfo:
    """The registry entry of ``name`` (canonical or alias); raises as ``canonical_name`` does."""
    return _BY_NAME[canonical_name(name)]


def canonical_name(name: str) -> str:
    """``keras`` -> ``tensorflow`` and the like.

    Raises:
        UnknownFrameworkError: no such framework (the message lists the choices).
        FrameworkUnavailableError: a framework convkit plans for but has no front end for (``dl4j``).
    """
    key = name.strip().lower()
    key = ALIASES.get(key, _PLANNED_ALIASES.get(key, key))
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
    """The command that makes ``frontend`` available: ``convkit env create paddle`` or the pip extra."""
    return frontend_info(frontend.name).install_command


def resolve_source(source: str, framework: str | None) -> tuple[Frontend, Any]:
    """Pick the front end for ``source`` and, for ``module:factory`` sources, the object it made.

    With ``framework`` given, a factory object of another framework is a clear error; without it, the
    framework is inferred from the file type or the factory object's class.
    """
    from convkit.core.sources import is_factory_source, load_factory

    wanted = canonical_name(framework) if framework is not None else None
    if is_factory_source(source):
        # NOTE: why the front end first: it sets its framework up quietly (TensorFlow prints at import)
        # before the user's factory imports the framework itself.
        chosen = get_frontend(wanted) if wanted is not None else None
        if isinstance(chosen, Isolated):
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
