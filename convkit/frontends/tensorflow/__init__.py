"""The TensorFlow/Keras front end: Keras models (``.keras``, ``.h5``, ``file.py:factory``) and SavedModel
folders, exported with tf2onnx and run natively for the reference outputs.

TensorFlow, Keras and tf2onnx are imported inside methods only, so that ``convkit --help`` never loads them.

NOTE: why every export goes through ``tf2onnx.convert.from_function`` with a ``tf.function`` of our own
rather than ``from_keras``: one path serves functional, Sequential and subclassed models and SavedModel
signatures alike (``from_keras`` takes only Keras models, and without a signature reads ``model.inputs``,
which subclassed models lack); the input signature comes from the specs (names, static and symbolic dims),
and the call and the output order are the same code that ``run`` uses for the reference outputs.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convkit.core.inputs import DEFAULT_BATCH_NAME, InputSpec
from convkit.errors import (
    ConvkitError,
    DataError,
    ExportError,
    InputFileError,
    ModelLoadError,
    UnsafeModelError,
    UnsupportedModelError,
)
from convkit.frontends._quiet import Quiet
from convkit.frontends.base import ExportOptions, ExportResult, LayerOutput, LoadOptions
from convkit.graph import conform as conform_module
from convkit.graph.conform import conform, save
from convkit.graph.names import subgraphs

if TYPE_CHECKING:
    import onnx

# NOTE: why 17: the newest opset that tf2onnx 1.17 (at most 18) and every current onnxruntime implement in
# full, and the opset of convkit's own fixtures; tf2onnx's own default (15) is older than it needs to be.
DEFAULT_OPSET = 17
# NOTE: why 7: the oldest opset onnxruntime runs; the fixtures export there too, but a model written at an
# opset onnxruntime has no kernels for would only fail later.
MIN_OPSET = 7
EXPORTER = "tf2onnx"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
_AUTO_INPUT_NAME = re.compile(r"^(keras_tensor|input_layer)(_\d+)?$")
_PLACEHOLDER = "convkit_input_{}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import_tf(verbose: bool = False) -> tuple[Any, Any]:
    """Import ``tensorflow`` and ``keras`` quietly (first import only); returns both modules."""
    if "tensorflow" not in sys.modules and not verbose:
        # NOTE: why setdefault: a user who set TF_CPP_MIN_LOG_LEVEL wants that level; otherwise the C++
        # runtime's INFO/WARNING lines are noise in a tool whose output is a parity table.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with Quiet(verbose):
        import keras
        import tensorflow as tf
    return tf, keras


@dataclass
class SavedModelSignature:
    """A SavedModel folder loaded with ``tf.saved_model.load``: its serving function and what it takes.

    ``inputs`` are the signature's keyword arguments (name -> ``tf.TensorSpec``); outputs are the dict it
    returns, in natural key order (``output_0``, ``output_1`` ...).
    """

    path: Path
    signature: str
    function: Any
    inputs: dict[str, Any]
    holder: Any = field(repr=False, default=None)  # keeps the loaded object (and its variables) alive


class TensorFlowFrontend:
    """Keras 3 models (functional, Sequential, subclassed; ``.keras``/``.h5`` files or factories) and
    SavedModel folders, exported with tf2onnx."""

    name = "tensorflow"
    aliases = ("keras", "tf")
    extra = "tensorflow"

    def is_available(self) -> str | None:
        """``None`` when TensorFlow, Keras (on its TensorFlow backend) and tf2onnx import, else why not."""
        try:
            _, keras = _import_tf()
            with Quiet():
                import tf2onnx  # noqa: F401
        except Exception as exc:  # an ImportError, or a broken install raising anything at import
            return f"{type(exc).__name__}: {_first_line(exc)}"
        backend = keras.config.backend() if hasattr(keras, "config") else "tensorflow"
        if backend != "tensorflow":
            return f"Keras runs on its {backend} backend here; set KERAS_BACKEND=tensorflow"
        return None

    def versions(self) -> dict[str, str]:
        """Versions of ``tensorflow``, ``keras`` and ``tf2onnx``."""
        tf, keras = _import_tf()
        with Quiet():
            import tf2onnx
        return {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__}

    def claims_path(self, path: Path) -> bool:
        """``.keras``, ``.h5`` and ``.hdf5`` files, and folders holding a ``saved_model.pb``."""
        if path.is_dir():
            return (path / "saved_model.pb").is_file()
        return path.suffix.lower() in KERAS_SUFFIXES

    # ------------------------------------------------------------------ loading

    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> Any:
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
        _import_tf(options.verbose)
        if preloaded is not None:
            model = self._check_model_object(preloaded, source)
        else:
            model = self._load_path(Path(source), options)
        if options.weights:
            self._load_weights(model, Path(options.weights), options.verbose)
        return model

    def _check_model_object(self, obj: Any, source: str) -> Any:
        tf, keras = _import_tf()
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

    def _load_path(self, path: Path, options: LoadOptions) -> Any:
        if not path.exists():
            raise InputFileError(f"model file {path} does not exist", "check the path")
        if path.is_dir():
            if not (path / "saved_model.pb").is_file():
                raise InputFileError(
                    f"{path} is a folder without saved_model.pb, so not a SavedModel",
                    "give a SavedModel folder, a .keras/.h5 file or path/to/file.py:factory",
                )
            return self._load_saved_model(path, options.verbose)
        if path.name.lower().endswith(".weights.h5"):
            raise ModelLoadError(
                f"{path} holds weights only, not a model",
                "give the model as the source (e.g. path/to/file.py:factory) and this file with --weights",
            )
        if path.suffix.lower() not in KERAS_SUFFIXES:
            raise ModelLoadError(
                f"{path} is not a Keras model file", "give a .keras or .h5 file, or a SavedModel folder"
            )
        return self._load_keras_file(path, options)

    def _load_keras_file(self, path: Path, options: LoadOptions) -> Any:
        import zipfile

        _, keras = _import_tf()
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
                    f"{path} needs a class Keras cannot find: {_first_line(exc)}",
                    "use a path/to/file.py:factory source that defines the class, decorated with "
                    "@keras.saving.register_keras_serializable()",
                ) from exc
            raise ModelLoadError(
                f"cannot load {path} as a Keras model: {_first_line(exc)}",
                "is the file complete? re-save it with model.save('model.keras')",
            ) from exc

    def _load_saved_model(self, path: Path, verbose: bool) -> SavedModelSignature:
        tf, _ = _import_tf()
        try:
            with Quiet(verbose):
                # NOTE: why tf.saved_model.load and not Keras: a SavedModel (Keras 3's model.export, or any
                # TensorFlow program) is a graph plus variables; no Python code is unpickled.
                loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise ModelLoadError(f"cannot load the SavedModel {path}: {_first_line(exc)}") from exc
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
        inputs = {name: kwargs[name] for name in sorted(kwargs, key=_natural_key)}
        return SavedModelSignature(path, key, function, inputs, holder=loaded)

    def _load_weights(self, model: Any, path: Path, verbose: bool) -> None:
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
                f"{_first_line(exc)}",
                "weights must come from the same architecture, saved with model.save_weights('x.weights.h5')",
            ) from exc

    # ------------------------------------------------------------------ inputs

    def input_names(self, model: Any) -> list[str] | None:
        """The Keras input names (``None`` for a subclassed model, which declares none)."""
        if isinstance(model, SavedModelSignature):
            return list(model.inputs)
        inputs = _keras_inputs(model)
        return [entry.name for entry in inputs] if inputs is not None else None

    def input_specs(self, model: Any) -> list[InputSpec] | None:
        """Specs from the declared input shapes: the unknown first dimension is ``batch``, other unknown
        dimensions ``<input>_dim<axis>``; ``None`` when the model declares no shapes."""
        if isinstance(model, SavedModelSignature):
            entries = [(name, spec.shape, spec.dtype) for name, spec in model.inputs.items()]
        else:
            inputs = _keras_inputs(model)
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
            specs.append(InputSpec(name=name, dims=dims, dtype=_dtype_name(dtype)))
        return specs

    # ------------------------------------------------------------------ running

    def run(self, model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run in inference mode (``training=False``); outputs flattened in order (dict outputs in their
        key order). Raises ``DataError`` when the model rejects the inputs."""
        tf, _ = _import_tf()
        tensors = {name: tf.convert_to_tensor(np.asarray(value)) for name, value in inputs.items()}
        try:
            with Quiet():
                outputs = _call(model, tensors)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:
            shapes = ", ".join(f"{name} {list(np.shape(value))}" for name, value in inputs.items())
            raise DataError(
                f"the model rejected the inputs ({shapes}): {_first_line(exc)}",
                "check the input names, shapes and dtypes (--input NAME:DIMS:DTYPE)",
            ) from exc
        return [np.asarray(value) for _, value in _flatten(outputs)]

    # ------------------------------------------------------------------ export

    def export(
        self,
        model: Any,
        specs: Sequence[InputSpec],
        example: Mapping[str, np.ndarray],
        path: Path,
        options: ExportOptions,
    ) -> ExportResult:
        """Export with tf2onnx; inputs named and shaped after ``specs`` (string dims symbolic), outputs
        named after the Keras outputs (``output``/``output_N`` where Keras has no names).

        Raises:
            UnsupportedModelError: an opset tf2onnx cannot write, or TensorFlow ops without ONNX equivalent.
            ExportError: tf2onnx failed; its last log lines are in the hint.
        """
        tf, _ = _import_tf(options.verbose)
        opset = _check_options(options)
        with Quiet(options.verbose):
            import tf2onnx
        notes: list[str] = []
        if not isinstance(model, SavedModelSignature) and not getattr(model, "built", True):
            # NOTE: why: a subclassed model has no weights until first called; creating them inside the
            # traced function would fail, so it is called once, eagerly, on the example data.
            self.run(model, example)
            notes.append("built the subclassed model by calling it once on the example inputs")
        signature = [
            tf.TensorSpec(
                [d if isinstance(d, int) else None for d in spec.dims],
                tf.as_dtype(spec.dtype),
                name=_PLACEHOLDER.format(k),
            )
            for k, spec in enumerate(specs)
        ]
        names = [spec.name for spec in specs]
        traced_keys: list[str | None] = []

        def call(*args: Any) -> tuple[Any, ...]:
            flat = _flatten(_call(model, dict(zip(names, args, strict=True))))
            traced_keys[:] = [key for key, _ in flat]
            return tuple(value for _, value in flat)

        large = _weight_bytes(model) > conform_module.EXTERNAL_DATA_THRESHOLD
        capture = Quiet(options.verbose)
        try:
            with capture, _numpy_product_shim():
                proto, storage = tf2onnx.convert.from_function(
                    tf.function(call, input_signature=signature),
                    input_signature=signature,
                    opset=opset,
                    large_model=large,
                )
        except ConvkitError:
            raise
        except Exception as exc:
            raise ExportError(
                f"exporting with tf2onnx failed: {type(exc).__name__}: {_first_line(exc)}",
                capture.tail() or "rerun with --verbose to see tf2onnx's log",
            ) from exc
        _check_converted(proto, opset, capture)
        outputs = _output_names(model, traced_keys, names)
        label = model.path.name if isinstance(model, SavedModelSignature) else getattr(model, "name", "model")
        proto.graph.name = str(label)
        notes.extend(
            conform(
                proto,
                specs,
                exporter="tf2onnx",
                input_names={_PLACEHOLDER.format(k): spec.name for k, spec in enumerate(specs)},
                output_names=outputs,
                batch_leads_outputs=True,
            )
        )
        # NOTE: why tf2onnx's storage: on its large-model path it keeps the tensors' bytes aside
        side_data = dict(storage.name_to_tensor_data) if large and storage is not None else None
        data_name = save(proto, path, side_data)
        if data_name:
            notes.append(f"a large model: its weights are in {data_name}, which must stay beside it")
        return ExportResult(exporter=f"{EXPORTER} {tf2onnx.__version__}", opset=opset, notes=notes)

    # ------------------------------------------------------------------ reference CNN (convkit matrix, train)

    # NOTE: why NHWC: Keras' Conv2D defaults to channels_last, the layout Keras users feed; the matrix and
    # `convkit train` transpose the NCHW digits for this front end.
    reference_layout = "NHWC"

    def reference_cnn(self, weights: Mapping[str, np.ndarray]) -> Any:
        """The reference CNN as a functional Keras model carrying canonical ``weights`` (see
        ``convkit.frontends.tensorflow.reference``)."""
        from convkit.frontends.tensorflow.reference import reference_cnn

        return reference_cnn(weights)

    def train_reference_cnn(
        self,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        epochs: int,
        seed: int,
        progress: Callable[[int, int, dict[str, float]], None],
    ) -> dict[str, np.ndarray]:
        """Train the reference CNN with Keras' own ``compile``/``fit``; returns canonical weights (see
        ``convkit.frontends.tensorflow.reference``)."""
        from convkit.frontends.tensorflow.reference import train_reference_cnn

        return train_reference_cnn(data, epochs, seed, progress)

    # ------------------------------------------------------------------ benchmark (convkit bench)

    def benchmark_runners(self, model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
        """Zero-argument calls for ``convkit bench``: ``keras eager`` (``model(x, training=False)``) and
        ``keras tf.function`` (the same call in a graph, without XLA), each returning NumPy arrays.

        NOTE: why the inputs become tensors once, here: converting NumPy arrays on every call would time a
        copy onnxruntime does not make; why ``.numpy()``: TensorFlow may return before the work is done
        (and so that both contenders hand back what onnxruntime hands back).
        """
        tf, _ = _import_tf()
        names = list(inputs)
        tensors = [tf.convert_to_tensor(np.asarray(inputs[name])) for name in names]

        def call(*args: Any) -> Any:
            return _call(model, dict(zip(names, args, strict=True)))

        def eager() -> list[np.ndarray]:
            return [value.numpy() for _, value in _flatten(call(*tensors))]

        # NOTE: why jit_compile=False: XLA is a different compiler with its own numerics and a long first
        # compile; the contender is TensorFlow's ordinary graph mode. The signature keeps one trace for
        # these shapes.
        graph = tf.function(
            call,
            input_signature=[tf.TensorSpec(t.shape, t.dtype) for t in tensors],
            jit_compile=False,
        )

        def compiled() -> list[np.ndarray]:
            return [value.numpy() for _, value in _flatten(graph(*tensors))]

        runners: dict[str, Callable[[], Any]] = {"keras eager": eager}
        # NOTE: why trace now: the first call traces the model (seconds); that belongs to setup, not to the
        # first timed call. A model that cannot be traced is left out rather than failing the benchmark.
        try:
            with Quiet():
                compiled()
        except Exception:
            return runners
        runners["keras tf.function"] = compiled
        return runners

    # ------------------------------------------------------------------ layer outputs (verify --localize)

    def layer_outputs(
        self, model: Any, onnx_model: Any, inputs: Mapping[str, np.ndarray]
    ) -> list[LayerOutput]:
        """Each Keras layer's activation paired with the ONNX value holding the same tensor (see
        ``convkit.frontends.tensorflow.layers``)."""
        from convkit.frontends.tensorflow.layers import layer_outputs

        return layer_outputs(self, model, onnx_model, inputs)


# ---------------------------------------------------------------------- Keras helpers


@dataclass
class _KerasInput:
    name: str  # what convkit and the ONNX model call it
    key: str  # what Keras is called with (the input's name, or its key in a dict-structured model)
    tensor: Any  # the KerasTensor, for shape and dtype


def _keras_inputs(model: Any) -> list[_KerasInput] | None:
    """The declared inputs of a functional or built Sequential model; ``None`` for subclassed ones."""
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    # NOTE: why the private attribute: a model built as keras.Model({"a": ..., "b": ...}, ...) is called
    # with a dict keyed by those keys, which need not be the tensors' names (Keras warns and keeps the keys).
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, Mapping) and len(struct) == len(inputs):
        pairs = [(str(key), str(key), tensor) for key, tensor in struct.items()]
    else:
        pairs = [(str(t.name), str(t.name), t) for t in inputs]
    entries = []
    automatic = [name for name, _, _ in pairs if _AUTO_INPUT_NAME.match(name)]
    for position, (name, key, tensor) in enumerate(pairs):
        # NOTE: why: an Input without a name gets keras_tensor_<counter>, different in every process;
        # the ONNX model gets a stable name instead.
        if _AUTO_INPUT_NAME.match(name):
            name = "input" if len(automatic) == 1 else f"input_{position}"
        entries.append(_KerasInput(name.split(":")[0], key, tensor))
    return entries


def _call(model: Any, named: Mapping[str, Any]) -> Any:
    """Call the model on named tensors: SavedModels by keyword, Keras models with their input names (a dict
    for several inputs) or, when the names are not the model's, positionally in the given order."""
    if isinstance(model, SavedModelSignature):
        if set(named) != set(model.inputs):
            named = dict(zip(model.inputs, named.values(), strict=True))
        outputs = model.function(**named)
        return {key: outputs[key] for key in sorted(outputs, key=_natural_key)}
    inputs = _keras_inputs(model)
    values = list(named.values())
    # NOTE: why no annotated variable here: this runs inside tf.function, whose AutoGraph rewrites it
    # (and gives up, with a warning, on an annotated variable assigned in branches).
    argument = values[0] if len(values) == 1 else values
    if inputs is not None and {entry.name for entry in inputs} == set(named):
        if len(inputs) == 1:
            argument = named[inputs[0].name]
        else:
            argument = {entry.key: named[entry.name] for entry in inputs}
    try:
        return model(argument, training=False)
    except TypeError as exc:
        # NOTE: why: a tf.Module's __call__ need not take ``training``; Keras layers always do.
        if "training" not in str(exc):
            raise
        return model(argument)


def _natural_key(text: str) -> list[Any]:
    """``output_2`` before ``output_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def _flatten(outputs: Any, prefix: str | None = None) -> list[tuple[str | None, Any]]:
    """Outputs in order as (key, tensor): dicts keep their key order (and name the output), lists and
    tuples their position; ``None`` entries are dropped."""
    if outputs is None:
        return []
    if isinstance(outputs, Mapping):
        flat: list[tuple[str | None, Any]] = []
        for key, value in outputs.items():
            flat.extend(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(outputs, list | tuple):
        return [item for value in outputs for item in _flatten(value, prefix)]
    return [(prefix, outputs)]


def _output_names(model: Any, keys: Sequence[str | None], input_names: Sequence[str]) -> list[str]:
    """Dict keys when outputs are a dict, else the Keras output names, else ``output``/``output_N``;
    unique, and distinct from the input names."""
    count = len(keys)
    names: list[str] | None = None
    if count and all(keys):
        names = [str(key) for key in keys]
    elif not isinstance(model, SavedModelSignature):
        keras_names = _keras_output_names(model)
        if keras_names is not None and len(keras_names) == count:
            names = keras_names
    if names is None:
        names = ["output"] if count == 1 else [f"output_{k}" for k in range(count)]
    taken = set(input_names)
    unique = []
    for name in names:
        candidate, n = name, 1
        while candidate in taken:
            candidate, n = f"{name}_{n}", n + 1
        taken.add(candidate)
        unique.append(candidate)
    return unique


def _keras_output_names(model: Any) -> list[str] | None:
    try:
        import keras

        if isinstance(model, keras.Sequential) and model.layers:
            return [model.layers[-1].name]
        names = getattr(model, "output_names", None)
    except Exception:  # a property that raises on an unbuilt model
        return None
    return [str(name) for name in names] if names else None


def _dims(shape: Any) -> list[int | None] | None:
    try:
        dims = list(shape.as_list() if hasattr(shape, "as_list") else shape)
    except (TypeError, ValueError):  # unknown rank
        return None
    return [None if d is None else int(d) for d in dims]


def _dtype_name(dtype: Any) -> str:
    return str(getattr(dtype, "name", dtype))


def _weight_bytes(model: Any) -> int:
    if isinstance(model, SavedModelSignature):
        return sum(f.stat().st_size for f in (model.path / "variables").glob("*") if f.is_file())
    total = 0
    for weight in getattr(model, "weights", None) or getattr(model, "variables", []):
        try:
            itemsize = np.dtype(_dtype_name(weight.dtype)).itemsize
        except TypeError:  # bfloat16 and other dtypes NumPy does not know
            itemsize = 4
        total += int(np.prod(weight.shape)) * itemsize
    return total


# ---------------------------------------------------------------------- export helpers


def _check_options(options: ExportOptions) -> int:
    """The opset to write; raises for an opset or exporter this front end cannot honour."""
    with Quiet(options.verbose):
        import tf2onnx
        import tf2onnx.constants

    if options.exporter not in (None, EXPORTER):
        raise ExportError(
            f"unknown exporter {options.exporter!r} for the tensorflow front end",
            f"it exports with {EXPORTER}; omit --exporter or pass --exporter {EXPORTER}",
        )
    highest = max(tf2onnx.constants.OPSET_TO_IR_VERSION)
    opset = DEFAULT_OPSET if options.opset is None else options.opset
    if not MIN_OPSET <= opset <= highest:
        raise UnsupportedModelError(
            f"cannot export at opset {opset}: tf2onnx {tf2onnx.__version__} writes opsets up to {highest}, "
            f"and onnxruntime runs {MIN_OPSET} and later",
            f"pass --opset {highest if opset > highest else MIN_OPSET} or "
            f"{'lower' if opset > highest else 'higher'}, or omit --opset for {DEFAULT_OPSET}",
        )
    return opset


@contextlib.contextmanager
def _numpy_product_shim() -> Iterator[None]:
    """Provide ``np.product`` while tf2onnx runs.

    NOTE: why: tf2onnx 1.17's large-model path (external tensors, for models past 2 GB) still calls
    ``np.product``, which NumPy 2 removed; without it such exports die with an AttributeError.
    """
    missing = not hasattr(np, "product")
    if missing:
        np.product = np.prod  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if missing:
            del np.product  # type: ignore[attr-defined]


def _check_converted(proto: onnx.ModelProto, opset: int, capture: Quiet) -> None:
    """Raise when tf2onnx left TensorFlow ops in the graph.

    NOTE: why: tf2onnx converts with ``continue_on_error`` and only logs ops it cannot map; the model it
    returns then fails later, in onnxruntime, with a message that does not say why.
    """
    import onnx

    unknown: dict[str, int] = {}
    for graph in subgraphs(proto.graph):
        for node in graph.node:
            domain = node.domain if node.domain not in ("ai.onnx",) else ""
            if not onnx.defs.has(node.op_type, domain):
                label = node.op_type if not domain else f"{domain}.{node.op_type}"
                unknown[label] = unknown.get(label, 0) + 1
    if unknown:
        listing = ", ".join(f"{op} (x{n})" if n > 1 else op for op, n in sorted(unknown.items()))
        raise UnsupportedModelError(
            f"tf2onnx could not convert these TensorFlow ops to ONNX opset {opset}: {listing}",
            capture.tail(2) or "try a newer --opset, or replace the layers that use them",
        )
