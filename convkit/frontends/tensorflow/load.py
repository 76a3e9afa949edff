"""Loading for the TensorFlow front end: which paths it claims, Keras files (``.keras``, ``.h5``), SavedModel
folders, the objects factories return, ``--weights`` files, and the inputs a loaded model declares."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from convkit.core.inputs import DEFAULT_BATCH_NAME, InputSpec
from convkit.errors import InputFileError, ModelLoadError, UnsafeModelError, UnsupportedModelError
from convkit.frontends._quiet import Quiet
from convkit.frontends.base import LoadOptions
from convkit.frontends.tensorflow._common import (
    SavedModelSignature,
    dtype_name,
    first_line,
    import_tf,
    keras_inputs,
    natural_key,
)

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def claims_path(path: Path) -> bool:
    """Whether ``path`` is a Keras file or a SavedModel folder.

    Args:
        path: a model file or folder.

    Returns:
        True for ``.keras``, ``.h5`` and ``.hdf5`` files, and folders holding a ``saved_model.pb``.
    """
    if path.is_dir():
        return (path / "saved_model.pb").is_file()
    return path.suffix.lower() in KERAS_SUFFIXES


def load(source: str, options: LoadOptions, preloaded: Any = None) -> Any:
    """Load a Keras model or SavedModel folder for inference.

    Args:
        source: a ``.keras``/``.h5`` file, a SavedModel folder, or the ``module:factory`` text that made
            ``preloaded``.
        options: ``weights`` (a ``.weights.h5`` file to load into the model) and ``unsafe_pickle`` (let
            Keras run the Python code stored in Lambda layers).
        preloaded: the object a factory returned.

    Returns:
        The ``keras.Model`` itself, or a ``SavedModelSignature`` for SavedModel folders.

    Raises:
        InputFileError: the file or folder is missing, or a folder is no SavedModel.
        ModelLoadError: the file is corrupt, holds only weights, or needs classes Keras cannot find.
        UnsafeModelError: the file holds Lambda-layer code and ``unsafe_pickle`` is off.
    """
    import_tf(options.verbose)
    if preloaded is not None:
        model = _check_model_object(preloaded, source)
    else:
        model = _load_path(Path(source), options)
    if options.weights:
        _load_weights(model, Path(options.weights), options.verbose)
    return model


def _check_model_object(obj: Any, source: str) -> Any:
    tf, keras = import_tf()
    if isinstance(obj, keras.layers.Layer | SavedModelSignature):
        return obj
    # NOTE: why tf.Module too: tf_keras (Keras 2) models and plain tf.Modules with a traced __call__
    # run and export through the same tf.function path.
    if isinstance(obj, tf.Module) and callable(obj):
        return obj
    raise UnsupportedModelError(
        f"{source} made a {type(obj).__module__}.{type(obj).__name__}, not a Keras model",
        "return a keras.Model (functional, Sequential or subclassed) from the factory",
    )


def _load_path(path: Path, options: LoadOptions) -> Any:
    if not path.exists():
        raise InputFileError(f"model file {path} does not exist", "check the path")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise InputFileError(
                f"{path} is a folder without saved_model.pb, so not a SavedModel",
                "give a SavedModel folder, a .keras/.h5 file or path/to/file.py:factory",
            )
        return _load_saved_model(path, options.verbose)
    if path.name.lower().endswith(".weights.h5"):
        raise ModelLoadError(
            f"{path} holds weights only, not a model",
            "give the model as the source (e.g. path/to/file.py:factory) and this file with --weights",
        )
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise ModelLoadError(
            f"{path} is not a Keras model file", "give a .keras or .h5 file, or a SavedModel folder"
        )
    return _load_keras_file(path, options)


def _load_keras_file(path: Path, options: LoadOptions) -> Any:
    import zipfile

    _, keras = import_tf()
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path} is not a valid .keras file (not a zip archive: truncated or corrupt?)",
            "re-save it with model.save('model.keras')",
        )
    try:
        with Quiet(options.verbose):
            # NOTE: why safe_mode: a Lambda layer stores marshalled Python bytecode that Keras runs on
            # load; like unpickling, that is off unless the user says they trust the file.
            return keras.saving.load_model(path, compile=False, safe_mode=not options.unsafe_pickle)
    except Exception as exc:
        text = str(exc)
        if "safe_mode" in text or "unsafe_deserialization" in text:
            raise UnsafeModelError(
                f"{path} holds a Lambda layer whose Python code Keras would run while loading it",
                "if you trust the file, pass --unsafe-allow-pickle (LoadOptions(unsafe_pickle=True))",
            ) from exc
        if "Could not locate" in text or "Unknown layer" in text or "custom_objects" in text:
            raise ModelLoadError(
                f"{path} needs a class Keras cannot find: {first_line(exc)}",
                "use a path/to/file.py:factory source that defines the class, decorated with "
                "@keras.saving.register_keras_serializable()",
            ) from exc
        raise ModelLoadError(
            f"cannot load {path} as a Keras model: {first_line(exc)}",
            "is the file complete? re-save it with model.save('model.keras')",
        ) from exc


def _load_saved_model(path: Path, verbose: bool) -> SavedModelSignature:
    tf, _ = import_tf()
    try:
        with Quiet(verbose):
            # NOTE: why tf.saved_model.load and not Keras: a SavedModel (Keras 3's model.export, or any
            # TensorFlow program) is a graph plus variables; no Python code is unpickled.
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"cannot load the SavedModel {path}: {first_line(exc)}") from exc
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if not signatures:
        raise ModelLoadError(
            f"the SavedModel {path} has no serving signature",
            "export it with a signature (Keras 3: model.export(path))",
        )
    if "serving_default" in signatures:
        key = "serving_default"
    elif len(signatures) == 1:
        key = next(iter(signatures))
    else:
        raise ModelLoadError(
            f"the SavedModel {path} has several signatures ({', '.join(signatures)}) and none is "
            "serving_default"
        )
    function = signatures[key]
    _, kwargs = function.structured_input_signature
    # NOTE: why sorted: a loaded signature's keyword order (inputs and outputs alike) follows a protobuf
    # map and varied between runs here; natural order keeps output_2 before output_10.
    inputs = {name: kwargs[name] for name in sorted(kwargs, key=natural_key)}
    return SavedModelSignature(path, key, function, inputs, holder=loaded)


def _load_weights(model: Any, path: Path, verbose: bool) -> None:
    if isinstance(model, SavedModelSignature):
        raise UnsupportedModelError(
            f"--weights applies to Keras models, not to the SavedModel {model.path}",
            "a SavedModel carries its own variables; drop --weights",
        )
    if not path.is_file():
        raise InputFileError(f"weights file {path} does not exist", "check the --weights path")
    if not getattr(model, "built", True):
        raise ModelLoadError(
            f"cannot load {path} into {type(model).__name__}: the model is not built yet",
            "build it in the factory (model.build(shape) or call it once) before loading weights",
        )
    try:
        with Quiet(verbose):
            model.load_weights(str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the weights {path} into {getattr(model, 'name', type(model).__name__)}: "
            f"{first_line(exc)}",
            "weights must come from the same architecture, saved with model.save_weights('x.weights.h5')",
        ) from exc


# ---------------------------------------------------------------------- the inputs a model declares


def input_names(model: Any) -> list[str] | None:
    """The names of a loaded model's inputs.

    Args:
        model: what ``load`` returned.

    Returns:
        The Keras input names or the SavedModel signature's keywords; ``None`` for a subclassed model,
        which declares none.
    """
    if isinstance(model, SavedModelSignature):
        return list(model.inputs)
    inputs = keras_inputs(model)
    return [entry.name for entry in inputs] if inputs is not None else None


def input_specs(model: Any) -> list[InputSpec] | None:
    """Input specs from the shapes a loaded model declares.

    Args:
        model: what ``load`` returned.

    Returns:
        One spec per input: the unknown first dimension is ``batch``, other unknown dimensions
        ``<input>_dim<axis>``; ``None`` when the model declares no shapes.
    """
    if isinstance(model, SavedModelSignature):
        entries = [(name, spec.shape, spec.dtype) for name, spec in model.inputs.items()]
    else:
        inputs = keras_inputs(model)
        if inputs is None:
            return None
        entries = [(entry.name, entry.tensor.shape, entry.tensor.dtype) for entry in inputs]
    specs = []
    for name, shape, dtype in entries:
        dims_known = _dims(shape)
        if dims_known is None:
            return None
        stem = re.sub(r"\W", "_", name)
        dims: list[int | str] = [
            d if d is not None else (DEFAULT_BATCH_NAME if axis == 0 else f"{stem}_dim{axis}")
            for axis, d in enumerate(dims_known)
        ]
        specs.append(InputSpec(name=name, dims=dims, dtype=dtype_name(dtype)))
    return specs


def _dims(shape: Any) -> list[int | None] | None:
    try:
        dims = list(shape.as_list() if hasattr(shape, "as_list") else shape)
    except (TypeError, ValueError):  # unknown rank
        return None
    return [None if d is None else int(d) for d in dims]
