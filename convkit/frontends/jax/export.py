"""Exporting a JAX model with jax2onnx: the opset and exporter checks, jax2onnx's plugin registration, the
trace (symbolic dimensions through JAX's shape polymorphism), the Cast on inputs JAX computes in 32 bits,
and the error messages for a failed trace or conversion.

NOTE: why 32-bit inputs meet a Cast: JAX computes in 32 bits unless ``jax_enable_x64`` is on, so an int64 or
float64 input is truncated to 32 bits on the way in, natively and in the traced graph alike. The ONNX model
keeps the input type the user asked for and casts it first, exactly as JAX does.

JAX, Flax, jax2onnx and onnx are imported inside functions only.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convkit.core.inputs import InputSpec
from convkit.errors import ConvkitError, ExportError, FrameworkUnavailableError, UnsupportedModelError
from convkit.frontends._quiet import Quiet
from convkit.frontends.base import ExportOptions, ExportResult
from convkit.frontends.jax import dynamic
from convkit.frontends.jax._common import first_line, import_jax, package_versions, positional_parameters
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
_MISSING_PRIMITIVE = re.compile(r"No plugins registered for primitive '([^']+)'")
_equinox_plugins_left_out = False  # see _register_plugins


def export_model(
    model: Any,
    specs: Sequence[InputSpec],
    example: Mapping[str, np.ndarray],
    path: Path,
    options: ExportOptions,
) -> ExportResult:
    """Export ``model`` with jax2onnx to ``path``, conformed (see ``convkit.graph.conform``).

    Args:
        model: an NNX module or a JAX callable, as ``load_model`` returns it.
        specs: the inputs' names, dims (strings are symbolic) and dtypes.
        example: concrete inputs, which fix the output names' tree (``jax.eval_shape``).
        path: where the ``.onnx`` file goes.
        options: ``opset``, ``exporter`` and ``verbose``.

    Returns:
        The exporter with its version, the opset written, and notes (inputs cast as JAX computes them).

    Raises:
        UnsupportedModelError: an opset out of range, or a JAX operation jax2onnx cannot convert.
        ExportError: an unknown exporter, or tracing or conversion failed.
        FrameworkUnavailableError: jax2onnx does not import.
    """
    import_jax(options.verbose)
    opset = check_options(options)
    jax2onnx = import_jax2onnx(options.verbose)
    # NOTE: why reordered: jax2onnx passes the inputs positionally, as ``run`` does
    order = positional_parameters(model)
    if order is not None and set(order) == {spec.name for spec in specs}:
        specs = sorted(specs, key=lambda spec: order.index(spec.name))
    with Quiet(options.verbose):
        settled, notes = dynamic.settle(model, specs)
    try:
        proto, outputs, symbols = _convert(jax2onnx, model, settled, example, opset, options.verbose)
    except ConvkitError as exc:
        fixed = dynamic.static_again(specs, settled)
        if fixed == settled:
            raise
        # NOTE: why again with the example's sizes: a trace that JAX takes symbolically may still meet a
        # jax2onnx plugin that needs a size; the axes left to the model then keep theirs, and say why
        settled = fixed
        proto, outputs, symbols = _convert(jax2onnx, model, settled, example, opset, options.verbose)
        notes = dynamic.kept_notes(specs, f"jax2onnx could not convert the model with {{it}} dynamic ({exc})")
    specs = settled
    notes += _cast_inputs(proto, specs)
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
    return ExportResult(f"{EXPORTER} {package_versions().get('jax2onnx', '')}".strip(), opset, notes)


def _convert(
    jax2onnx: Any,
    model: Any,
    specs: Sequence[InputSpec],
    example: Mapping[str, np.ndarray],
    opset: int,
    verbose: bool,
) -> tuple[onnx.ModelProto, list[str], dict[str, str]]:
    """jax2onnx's model for ``specs`` (string dims traced symbolically), the output names, and the
    symbols the dims were traced under (see ``_jax_symbols``)."""
    jax, nnx = import_jax(verbose)
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
    capture = Quiet(verbose)
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
    return proto, outputs, symbols


def check_options(options: ExportOptions) -> int:
    """The opset to write, after checking the options this front end cannot honour.

    Args:
        options: ``exporter`` (``None``, ``auto`` or ``jax2onnx``) and ``opset`` (``None`` for the default).

    Returns:
        The opset, ``DEFAULT_OPSET`` unless one was asked for.

    Raises:
        ExportError: an exporter other than jax2onnx.
        UnsupportedModelError: an opset outside ``MIN_OPSET`` to the newest onnx knows.
    """
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


# ============================================================================================== jax2onnx
def import_jax2onnx(verbose: bool = False) -> Any:
    """Import ``jax2onnx`` quietly and register its conversion plugins (see :func:`_register_plugins`).

    Args:
        verbose: show what jax2onnx prints instead of hiding it.

    Returns:
        The ``jax2onnx`` module.

    Raises:
        FrameworkUnavailableError: jax2onnx does not import (a broken or incompatible install).
    """
    try:
        with Quiet(verbose):
            import jax2onnx

            _register_plugins()
    except ImportError as exc:
        raise FrameworkUnavailableError(
            f"jax2onnx does not import: {first_line(exc)}", "pip install 'convkit[jax]'"
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


# ================================================================================================ trace
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


def _model_name(model: Any, nnx: Any) -> str:
    """The ONNX graph's name: the module's class, or the function's name (through ``functools.partial``)."""
    if isinstance(model, nnx.Module):
        return type(model).__name__
    target = getattr(model, "func", model)  # functools.partial
    return str(getattr(target, "__name__", type(model).__name__))


# =============================================================================================== errors
def _export_error(exc: Exception, capture: Quiet) -> ConvkitError:
    """The user-facing error for a failed trace or conversion."""
    import jax

    text = first_line(exc)
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


# ================================================================================================ graph
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
