"""The JAX/Flax front end: Flax NNX modules and plain JAX functions from ``path/to/file.py:factory`` sources,
exported with jax2onnx and run natively (eagerly, on ``jax.Array`` inputs) for the reference outputs.

JAX, Flax and jax2onnx are imported inside functions only, so that ``convkit --help`` never loads them.

A source is a factory returning either a ``flax.nnx.Module`` (put in eval mode: Dropout deterministic,
BatchNorm on its running averages) or any JAX callable of its inputs, with its parameters closed over
(``functools.partial(apply, params)``, a ``jax.jit``-wrapped function). JAX has no model file format of its
own (checkpoints hold weights, not the computation), so there is no file source.

NOTE: why 32-bit inputs meet a Cast: JAX computes in 32 bits unless ``jax_enable_x64`` is on, so an int64 or
float64 input is truncated to 32 bits on the way in, natively and in the traced graph alike. The ONNX model
keeps the input type the user asked for and casts it first, exactly as JAX does.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convkit.core.inputs import InputSpec
from convkit.errors import (
    ConvkitError,
    DataError,
    ExportError,
    FrameworkUnavailableError,
    InputFileError,
    ModelLoadError,
    UnsupportedModelError,
)
from convkit.frontends._quiet import Quiet
from convkit.frontends.base import ExportOptions, ExportResult, LoadOptions
from convkit.graph.conform import conform, save
from convkit.graph.names import all_names, output_names, rename_values, unused_name

if TYPE_CHECKING:
    import onnx

# NOTE: why 17: the opset of convkit's own fixtures and of the other front ends' defaults, implemented in full
# by every current onnxruntime; jax2onnx's own default (23) needs onnxruntime 1.22 or later.
DEFAULT_OPSET = 17
# NOTE: why 13: opset 13 moved the axes of Squeeze, Unsqueeze, ReduceSum and Split from attributes to inputs
# and gave Softmax its per-axis meaning; jax2onnx writes those ops in their modern form only.
MIN_OPSET = 13
EXPORTER = "jax2onnx"
# NOTE: why not 2 GiB exactly: protobuf's limit covers the whole serialized model, graph and metadata too.
_MISSING_PRIMITIVE = re.compile(r"No plugins registered for primitive '([^']+)'")
_equinox_plugins_left_out = False  # see _register_plugins


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import_jax(verbose: bool = False) -> tuple[Any, Any]:
    """Import ``jax`` and ``flax.nnx`` and start JAX's backend, quietly; returns both modules."""
    if "jax" not in sys.modules and not verbose:
        # NOTE: why setdefault: a user who set TF_CPP_MIN_LOG_LEVEL wants that level; otherwise XLA's C++
        # INFO/WARNING lines are noise in a tool whose output is a parity table.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with Quiet(verbose):
        import jax
        from flax import nnx
    with Quiet(verbose):  # a second block: the jax logger is silenced only once jax is imported
        # NOTE: why start the backend here: its first use logs a warning on a GPU machine whose jaxlib is
        # the CPU build ("Falling back to cpu"); a factory making arrays would otherwise print it.
        jax.devices()
    return jax, nnx


def _import_jax2onnx(verbose: bool = False) -> Any:
    """Import ``jax2onnx`` quietly and register its conversion plugins (see :func:`_register_plugins`).

    Raises:
        FrameworkUnavailableError: jax2onnx does not import (a broken or incompatible install).
    """
    try:
        with Quiet(verbose):
            import jax2onnx

            _register_plugins()
    except ImportError as exc:
        raise FrameworkUnavailableError(
            f"jax2onnx does not import: {_first_line(exc)}", "pip install 'convkit[jax]'"
        ) from exc
    return jax2onnx


def _register_plugins() -> None:
    """Import jax2onnx's plugins, leaving its Equinox ones out unless Equinox is in use, and its examples.

    NOTE: why: jax2onnx imports every module under its ``plugins`` folder on its first conversion, and its
    Equinox plugins build example modules at import, compiling some 70 small XLA programs: 6 of the 7.6 s of
    a first export here. They matter only for models built from Equinox layers, which import ``equinox``
    first; the ``examples`` folder holds jax2onnx's own test models (which import Equinox), no plugins. The
    rest is imported through jax2onnx's own importer and marked done. Where jax2onnx's internals differ
    (another version), nothing happens here and jax2onnx imports everything itself, as it always does.
    """
    global _equinox_plugins_left_out
    try:
        from jax2onnx.plugins import plugin_system
    except ImportError:
        return
    import_tree = getattr(plugin_system, "_import_tree", None)
    done = getattr(plugin_system, "_already_imported_plugins", None)
    if import_tree is None or not isinstance(done, bool):
        return
    root = Path(plugin_system.__file__).parent
    if done:
        if _equinox_plugins_left_out and "equinox" in sys.modules:
            import_tree(root / "equinox", "jax2onnx.plugins.equinox")
            _equinox_plugins_left_out = False
        return
    if "equinox" in sys.modules:
        return
    for module in sorted(root.glob("*.py")):
        if module.stem not in ("__init__", "plugin_system"):
            importlib.import_module(f"jax2onnx.plugins.{module.stem}")
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("__")):
        if folder.name not in ("equinox", "examples"):
            import_tree(folder, f"jax2onnx.plugins.{folder.name}")
    plugin_system._already_imported_plugins = True
    _equinox_plugins_left_out = True


class JaxFrontend:
    """JAX: Flax NNX modules and plain JAX functions made by ``path/to/file.py:factory`` sources, exported
    with jax2onnx."""

    name = "jax"
    aliases: tuple[str, ...] = ("flax",)
    extra = "jax"

    # ----------------------------------------------------------------------------------------------- setup
    def is_available(self) -> str | None:
        """``None`` when JAX and Flax import and jax2onnx is installed, else why not.

        NOTE: why jax2onnx is only looked up here: running and verifying never convert, and importing it
        costs half a second (sympy, through onnx_ir); ``export`` imports it and says so if that fails.
        """
        try:
            _import_jax()
        except Exception as exc:  # an ImportError, or a broken install raising anything at import
            return f"{type(exc).__name__}: {_first_line(exc)}"
        if importlib.util.find_spec("jax2onnx") is None:
            return "jax2onnx is not installed"
        return None

    def versions(self) -> dict[str, str]:
        """Versions of ``jax``, ``jaxlib``, ``flax`` and ``jax2onnx``."""
        found = {}
        for package in ("jax", "jaxlib", "flax", "jax2onnx"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                found[package] = importlib.metadata.version(package)
        return found

    def claims_path(self, path: Path) -> bool:
        """No file is JAX's: models come from factories (checkpoints hold weights, not the computation)."""
        return False

    # ------------------------------------------------------------------------------------------------ load
    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> Any:
        """The model a factory made, ready for inference: an NNX module in eval mode, or a JAX callable.

        Args:
            source: the ``module:factory`` text that made ``preloaded``.
            options: ``weights``, an ``.npz`` of the NNX module's parameters and batch statistics keyed by
                their dotted paths (``encoder.layers.0.kernel``), loaded without unpickling.
            preloaded: the object the factory returned.

        Raises:
            InputFileError: ``source`` is a file (JAX has no model file format convkit can load).
            UnsupportedModelError: the factory made no JAX model (a Flax Linen module, an array, ...).
            ModelLoadError: ``--weights`` does not fit the module.
        """
        _, nnx = _import_jax(options.verbose)
        if preloaded is None:
            raise InputFileError(
                f"the jax front end loads models from factories, and {source} is none",
                "give path/to/file.py:factory or package.module:factory returning a flax.nnx.Module or a "
                "JAX function",
            )
        model = _check_model_object(preloaded, source)
        if options.weights is not None:
            if not isinstance(model, nnx.Module):
                raise ModelLoadError(
                    f"--weights applies to Flax NNX modules; {source} made a plain function",
                    "close the weights over in the factory (functools.partial(apply, params))",
                )
            _load_weights(model, Path(options.weights))
        if isinstance(model, nnx.Module):
            # NOTE: why eval() in place, like model.eval() in PyTorch: Dropout turns deterministic and
            # BatchNorm uses its running averages, the inference behaviour an ONNX model has to reproduce.
            model.eval()
        return model

    # -------------------------------------------------------------------------------------------- inputs
    def input_names(self, model: Any) -> list[str] | None:
        """The required positional parameters of the call (``__call__`` for a module), when readable."""
        return _positional_parameters(model)

    def input_specs(self, model: Any) -> list[InputSpec] | None:
        """``None``: a JAX function declares no input shapes (they come from ``--input`` or ``--data``)."""
        return None

    # ------------------------------------------------------------------------------------------------ run
    def run(self, model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Call the model eagerly on ``jax.Array`` inputs (positionally, in the model's parameter order) and
        flatten the outputs as ``jax.tree_util`` does (dicts by sorted key, ``None`` dropped), the order of
        the exported graph's outputs. Raises ``DataError`` when the model rejects the inputs."""
        jax, _ = _import_jax()
        arrays = _ordered(model, inputs)
        try:
            with Quiet():
                outputs = model(*[jax.numpy.asarray(value) for value in arrays.values()])
                leaves = jax.tree_util.tree_leaves(outputs)
                return [np.asarray(leaf) for leaf in leaves]
        except ConvkitError:
            raise
        except (TypeError, ValueError) as exc:
            shapes = ", ".join(f"{name} {list(np.shape(value))}" for name, value in arrays.items())
            raise DataError(
                f"the model rejected the inputs ({shapes}): {type(exc).__name__}: {_first_line(exc)}",
                "check the input names, shapes and dtypes (--input NAME:DIMS:DTYPE)",
            ) from exc

    # --------------------------------------------------------------------------------------------- export
    def export(
        self,
        model: Any,
        specs: Sequence[InputSpec],
        example: Mapping[str, np.ndarray],
        path: Path,
        options: ExportOptions,
    ) -> ExportResult:
        """Export with jax2onnx to ``path``: inputs named and typed after ``specs`` (string dims symbolic,
        traced with JAX's shape polymorphism), outputs named ``output`` / ``output_N`` (dict keys when the
        model returns a dict), in ``run``'s order.

        Raises:
            UnsupportedModelError: an opset out of range, or a JAX operation jax2onnx cannot convert.
            ExportError: tracing or conversion failed (a dimension meant to be symbolic that the model fixes,
                a model that does not take the inputs); jax2onnx's last log lines are in the hint.
        """
        jax, nnx = _import_jax(options.verbose)
        opset = _check_options(options)
        jax2onnx = _import_jax2onnx(options.verbose)
        # NOTE: why reordered: jax2onnx passes the inputs positionally, as ``run`` does
        order = _positional_parameters(model)
        if order is not None and set(order) == {spec.name for spec in specs}:
            specs = sorted(specs, key=lambda spec: order.index(spec.name))
        symbols = _jax_symbols(specs)
        structs = [
            jax.ShapeDtypeStruct(
                tuple(d if isinstance(d, int) else symbols[d] for d in spec.dims),
                jax.dtypes.canonicalize_dtype(np.dtype(spec.dtype)),
            )
            for spec in specs
        ]
        concrete = [
            jax.ShapeDtypeStruct(np.shape(example[s.name]), struct.dtype)
            for s, struct in zip(specs, structs, strict=True)
        ]
        names = [spec.name for spec in specs]
        capture = Quiet(options.verbose)
        try:
            with capture:
                outputs = _output_names(jax.eval_shape(model, *concrete), names)
                proto = jax2onnx.to_onnx(
                    model, structs, model_name=_model_name(model, nnx), opset=opset, input_names=names
                )
        except ConvkitError:
            raise
        except Exception as exc:
            raise _export_error(exc, capture) from exc
        notes = _cast_inputs(proto, specs)
        # NOTE: why drop value_info: jax2onnx annotates intermediate values with shapes that can be wrong
        # (NHWC dims on a transposed NCHW value), which onnxruntime reports on stderr when it loads the
        # model; the annotations are optional, and onnxruntime infers the shapes itself.
        del proto.graph.value_info[:]
        notes += conform(
            proto,
            specs,
            exporter="jax2onnx",
            output_names=outputs,
            dim_names={safe: name for name, safe in symbols.items()},
        )
        save(proto, path)
        return ExportResult(f"{EXPORTER} {self.versions().get('jax2onnx', '')}".strip(), opset, notes)

    # ------------------------------------------------------------------ reference CNN (convkit matrix, train)
    # NOTE: why NHWC: Flax's Conv is channels-last, the layout Flax users feed; `convkit matrix` and `convkit
    # train` transpose the NCHW digits for this front end, and the weights go through to_channels_last.
    reference_layout = "NHWC"

    def reference_cnn(self, weights: Mapping[str, np.ndarray]) -> Any:
        """The reference CNN as a Flax NNX module in eval mode carrying canonical ``weights`` (see
        ``convkit.frontends.jax.reference``): input ``x`` (batch, 28, 28, 1), output the 10 probabilities."""
        from convkit.frontends.jax.reference import build_reference_cnn

        return build_reference_cnn(weights)

    def train_reference_cnn(
        self,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        epochs: int,
        seed: int,
        progress: Callable[[int, int, dict[str, float]], None],
    ) -> dict[str, np.ndarray]:
        """Train the reference CNN with an optax loop under ``nnx.jit`` (Adam, mini-batches, dropout active;
        see ``convkit.frontends.jax.reference``); returns canonical weights."""
        from convkit.frontends.jax.reference import train_reference_cnn

        return train_reference_cnn(data, epochs, seed, progress)

    # ------------------------------------------------------------------ benchmark (convkit bench)
    def benchmark_runners(self, model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
        """Zero-argument calls for ``convkit bench``: ``jax eager`` (the model called op by op, as ``run``
        does) and ``jax.jit`` (the whole call compiled by XLA), each returning NumPy arrays.

        NOTE: why the inputs become ``jax.Array`` once, here: converting NumPy arrays on every call would time
        a copy onnxruntime does not make; why NumPy results: JAX dispatches asynchronously, and converting
        waits for the work (and hands back what onnxruntime hands back).
        """
        jax, nnx = _import_jax()
        arrays = [jax.numpy.asarray(value) for value in _ordered(model, inputs).values()]

        def eager() -> list[np.ndarray]:
            return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(model(*arrays))]

        if isinstance(model, nnx.Module):
            # NOTE: why split and merge: the idiomatic way to jit a module's call; the parameters are an
            # argument of the compiled function, not constants folded into it.
            graphdef, state = nnx.split(model)
            compiled = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args))

            def call() -> Any:
                return compiled(state, *arrays)
        else:
            jitted = jax.jit(model)

            def call() -> Any:
                return jitted(*arrays)

        def run_jit() -> list[np.ndarray]:
            return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(call())]

        runners: dict[str, Callable[[], Any]] = {"jax eager": eager}
        # NOTE: why compile now: the first call compiles (seconds); that belongs to setup, not to the first
        # timed call. A model XLA cannot compile is left out rather than failing the benchmark.
        try:
            with Quiet():
                run_jit()
        except Exception:
            return runners
        runners["jax.jit"] = run_jit
        return runners


# ====================================================================================== loading helpers
def _check_model_object(obj: Any, source: str) -> Any:
    """``obj`` itself when it is a JAX model (an NNX module or a callable), else a clear error."""
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


def _load_weights(model: Any, path: Path) -> None:
    """Load an ``.npz`` of parameters and batch statistics (keys: dotted paths) into an NNX module.

    NOTE: why ``.npz`` read with ``allow_pickle=False``: plain arrays by name carry no code; a Flax or orbax
    checkpoint restores into a module the user's code builds, which a factory can do itself.
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
            f"cannot read the weights {path}: {_first_line(exc)}",
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


def _positional_parameters(model: Any) -> list[str] | None:
    """Required positional parameter names of ``model``'s call; ``None`` where unreadable or ``*args``."""
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):
        return None
    names = []
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return None
        positional = parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        if positional and parameter.default is parameter.empty:
            names.append(parameter.name)
    return names or None


def _ordered(model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` in the model's parameter order where the names are the parameters, else as given."""
    names = _positional_parameters(model)
    if names is not None and set(names) == set(inputs):
        return {name: inputs[name] for name in names}
    return dict(inputs)


def _model_name(model: Any, nnx: Any) -> str:
    if isinstance(model, nnx.Module):
        return type(model).__name__
    target = getattr(model, "func", model)  # functools.partial
    return str(getattr(target, "__name__", type(model).__name__))


# ====================================================================================== export helpers
def _check_options(options: ExportOptions) -> int:
    """The opset to write; raises for an opset or exporter this front end cannot honour."""
    import onnx

    if options.exporter not in (None, "", "auto", EXPORTER):
        raise ExportError(
            f"unknown exporter {options.exporter!r} for the jax front end",
            f"it exports with {EXPORTER}; omit --exporter or pass --exporter {EXPORTER}",
        )
    highest = onnx.defs.onnx_opset_version()
    opset = DEFAULT_OPSET if options.opset is None else options.opset
    if not MIN_OPSET <= opset <= highest:
        raise UnsupportedModelError(
            f"cannot export at opset {opset}: the jax front end writes opsets {MIN_OPSET} to {highest}",
            f"pass --opset between {MIN_OPSET} and {highest}, or omit --opset for {DEFAULT_OPSET}",
        )
    return opset


def _jax_symbols(specs: Sequence[InputSpec]) -> dict[str, str]:
    """Each symbolic dimension's name -> the name JAX traces it under.

    NOTE: why: JAX parses symbolic dimensions as expressions, so a dimension called ``max`` or ``mod`` is a
    syntax error; those trace under a stand-in, and the ONNX model gets the user's names back.
    """
    import jax

    symbols: dict[str, str] = {}
    for spec in specs:
        for d in spec.dims:
            if isinstance(d, str) and d not in symbols:
                try:
                    fine = [str(s) for s in jax.export.symbolic_shape(d)] == [d]
                except Exception:
                    fine = False
                symbols[d] = d if fine else f"convkit_dim{len(symbols)}"
    return symbols


def _output_names(shapes: Any, input_names: Sequence[str]) -> list[str]:
    """``output`` for one output, ``output_N`` for sequences, the keys (``logits``) for a dict; unique and
    distinct from the input names. ``shapes`` is the output tree (``jax.eval_shape``)."""
    import jax

    paths = [tuple(_key_text(key) for key in path) for path, _ in jax.tree_util.tree_leaves_with_path(shapes)]
    return output_names(paths, isinstance(shapes, Mapping), input_names)


def _key_text(key: Any) -> str:
    """One step of a ``jax.tree_util`` key path as text: a dict key, a sequence index, an attribute name."""
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _export_error(exc: Exception, capture: Quiet) -> ConvkitError:
    """The user-facing error for a failed trace or conversion."""
    import jax

    text = _first_line(exc)
    missing = _MISSING_PRIMITIVE.search(str(exc))
    if missing:
        return UnsupportedModelError(
            f"jax2onnx cannot convert the JAX operation {missing.group(1)!r} to ONNX",
            "replace that operation in the model (host callbacks have no ONNX equivalent)",
        )
    if isinstance(exc, NotImplementedError):
        return UnsupportedModelError(f"jax2onnx cannot convert the model: {text}")
    if isinstance(exc, jax.errors.InconclusiveDimensionOperation) or "symbolic" in str(exc).lower():
        return ExportError(
            f"the model fixes a dimension given as symbolic: {text}",
            "give that dimension as a size in --input (or pass --static), or make the model accept any size",
        )
    return ExportError(
        f"exporting with jax2onnx failed: {type(exc).__name__}: {text}",
        capture.tail() or "rerun with --verbose to see jax2onnx's log",
    )


def _cast_inputs(proto: onnx.ModelProto, specs: Sequence[InputSpec]) -> list[str]:
    """Inputs JAX traced in another dtype than the spec's (int64 as int32 with jax_enable_x64 off) take the
    spec's dtype and a Cast to the traced one; returns notes."""
    import onnx

    graph = proto.graph
    notes: list[str] = []
    by_name = {value.name: value for value in graph.input}
    for spec in specs:
        value = by_name.get(spec.name)
        if value is None:
            continue
        wanted = int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype)))
        traced = value.type.tensor_type.elem_type
        if traced and traced != wanted:
            inner = unused_name(all_names(graph), spec.name)
            rename_values(graph, {spec.name: inner})
            value.name = spec.name
            graph.node.insert(0, onnx.helper.make_node("Cast", [spec.name], [inner], to=traced))
            computed = onnx.helper.tensor_dtype_to_np_dtype(traced).name
            notes.append(
                f"input {spec.name} is {spec.dtype}, which JAX computes in {computed} (jax_enable_x64 is "
                "off); the ONNX model casts it the same way"
            )
        value.type.tensor_type.elem_type = wanted
    return notes
