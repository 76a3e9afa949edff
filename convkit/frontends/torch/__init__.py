"""The PyTorch front end: ``nn.Module`` factories, ``.pt2`` ExportedPrograms and TorchScript files, exported
with the torch.export-based exporter and, when it cannot capture a model, the TorchScript one.

torch is imported inside methods only: ``convkit --help`` must start without it.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convkit.core.inputs import InputSpec
from convkit.errors import (
    DataError,
    ExportError,
    InputFileError,
    ModelLoadError,
    UnsafeModelError,
)
from convkit.frontends._quiet import Quiet
from convkit.frontends.base import ExportOptions, ExportResult, LayerOutput, LoadOptions
from convkit.graph.names import output_names

if TYPE_CHECKING:
    import torch

_MODEL_SUFFIXES = (".pt2", ".pt", ".pth", ".ts")
_EXPORTERS = ("dynamo", "torchscript")
_EXPORTER_ALIASES = {
    "torch.export": "dynamo",
    "export": "dynamo",
    "jit": "torchscript",
    "legacy": "torchscript",
}
# keys under which training scripts commonly nest the state dict in a checkpoint
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
_INPUT_DTYPES = {"float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class TorchFrontend:
    """PyTorch: ``path/to/file.py:factory`` (an ``nn.Module``), ``.pt2`` (``torch.export.save``) and
    TorchScript (``torch.jit.save``) files; whole pickled modules only with ``unsafe_pickle``."""

    name = "torch"
    aliases: tuple[str, ...] = ("pytorch",)
    extra = "torch"

    # ----------------------------------------------------------------------------------------------- setup
    def is_available(self) -> str | None:
        """``None`` when torch imports, else why it does not."""
        try:
            import torch  # noqa: F401
        except Exception as exc:
            return f"import torch failed: {type(exc).__name__}: {exc}"
        return None

    def versions(self) -> dict[str, str]:
        """torch and the ONNX packages its exporter uses."""
        import torch

        found = {"torch": str(torch.__version__)}
        for package in ("onnxscript", "onnx"):
            with contextlib.suppress(Exception):
                found[package] = str(__import__(package).__version__)
        return found

    def claims_path(self, path: Path) -> bool:
        """``.pt2``, ``.pt``, ``.pth`` and ``.ts`` files are PyTorch's."""
        return path.suffix.lower() in _MODEL_SUFFIXES and not path.is_dir()

    # ------------------------------------------------------------------------------------------------ load
    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> Any:
        """Load ``source`` in eval mode: a factory's object, or a ``.pt2`` / TorchScript / pickled file.

        Returns an ``nn.Module``, a ``torch.jit.ScriptModule`` or a ``torch.export.ExportedProgram``.

        Raises:
            ModelLoadError: the file is corrupt, holds only weights, or ``--weights`` does not fit.
            UnsafeModelError: the file is a pickled module and ``options.unsafe_pickle`` is off.
        """
        import torch

        if preloaded is not None:
            model = _check_model_object(preloaded, source)
        else:
            model = _load_model_file(Path(source), options.unsafe_pickle)
        if options.weights is not None:
            if isinstance(model, torch.export.ExportedProgram | torch.jit.ScriptModule):
                raise ModelLoadError(
                    f"--weights applies to models built by a factory; {source} carries its own weights",
                    "give the model's code as path/to/file.py:factory together with --weights",
                )
            _load_weights(model, Path(options.weights), options.unsafe_pickle)
        if isinstance(model, torch.nn.Module):
            model.eval()
        return model

    # -------------------------------------------------------------------------------------------- inputs
    def input_names(self, model: Any) -> list[str] | None:
        """``forward``'s required parameters (or the ExportedProgram's / TorchScript schema's inputs)."""
        import torch

        if isinstance(model, torch.export.ExportedProgram):
            return [_placeholder_name(spec) for spec in _user_input_specs(model)]
        if isinstance(model, torch.jit.ScriptModule):
            return _script_input_names(model)
        return _forward_input_names(model)

    def input_specs(self, model: Any) -> list[InputSpec] | None:
        """Shapes an ExportedProgram recorded (its symbolic dims stay symbolic); ``None`` for modules."""
        import torch

        if not isinstance(model, torch.export.ExportedProgram):
            return None
        symbols: dict[str, str] = {}
        specs = []
        for spec in _user_input_specs(model):
            name = _placeholder_name(spec)
            value = _placeholder_value(model, name)
            if value is None or not isinstance(value, torch.Tensor):
                return None
            dtype = str(value.dtype).removeprefix("torch.")
            if dtype not in _INPUT_DTYPES:
                return None
            dims: list[int | str] = []
            for axis, size in enumerate(value.shape):
                if isinstance(size, int):
                    dims.append(size)
                    continue
                key = str(size)
                if key not in symbols:
                    # NOTE: why rename: torch.export calls dims s0, s77 ...; the batch is the usual meaning of
                    # a symbolic leading dim, and a stable name reads better in the ONNX file and reports.
                    wanted = "batch" if axis == 0 and "batch" not in symbols.values() else f"{name}_dim{axis}"
                    symbols[key] = re.sub(r"\W", "_", wanted)
                dims.append(symbols[key])
            specs.append(InputSpec(name, dims, dtype))
        return specs

    # ------------------------------------------------------------------------------------------------ run
    def run(self, model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run eagerly (eval mode, no gradients) and flatten the outputs: tensors, sequences, dict values."""
        return [_to_numpy(value) for _, value in _flatten_outputs(_call_model(model, inputs))]

    def benchmark_runners(self, model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Zero-argument callables for ``convkit bench``: eager PyTorch and, where it works, torch.compile."""
        import torch

        args, kwargs = _call_arguments(model, inputs)
        target = _callable(model)

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

    # ------------------------------------------------------------------ reference CNN (convkit matrix, train)
    # NOTE: why NCHW: PyTorch's Conv2d is channels-first, and the canonical weights are in PyTorch's layout.
    reference_layout = "NCHW"

    def reference_cnn(self, weights: Mapping[str, np.ndarray]) -> Any:
        """The reference CNN (``convkit.frontends.torch.reference.ReferenceCNN``) in eval mode, carrying
        canonical ``weights``: input ``x`` (batch, 1, 28, 28), output the 10 class probabilities."""
        from convkit.frontends.torch.reference import build_reference_cnn

        return build_reference_cnn(weights)

    def train_reference_cnn(
        self,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        epochs: int,
        seed: int,
        progress: Callable[[int, int, dict[str, float]], None],
    ) -> dict[str, np.ndarray]:
        """Train the reference CNN from scratch with a PyTorch optimizer loop (Adam, mini-batches, dropout in
        train mode; see ``torch_reference.train_reference_cnn``) on ``(x_train, y_train, x_test, y_test)``
        (NCHW images, int labels); ``progress(epoch, epochs, metrics)`` after each epoch; returns canonical
        weights."""
        from convkit.frontends.torch.reference import train_reference_cnn

        return train_reference_cnn(data, epochs, seed, progress)

    # ------------------------------------------------------------------ layer outputs (verify --localize)
    def layer_outputs(
        self, model: Any, onnx_model: Any, inputs: Mapping[str, np.ndarray]
    ) -> list[LayerOutput]:
        """Module activations (forward hooks, eval mode, no gradients) in execution order, each paired with
        the value of ``onnx_model`` computing the same tensor, found through the module scopes the exporter
        recorded (see ``convkit.frontends.torch.layers``). Functional results (``torch.relu``) are paired
        where the next module receives them, named after their node (``relu_2``). Modules without a clear
        counterpart are left out; ExportedPrograms, TorchScript modules and files without scopes give ``[]``.
        """
        from convkit.frontends.torch.layers import layer_outputs

        return layer_outputs(model, onnx_model, inputs)

    # --------------------------------------------------------------------------------------------- export
    def export(
        self,
        model: Any,
        specs: Sequence[InputSpec],
        example: Mapping[str, np.ndarray],
        path: Path,
        options: ExportOptions,
    ) -> ExportResult:
        """Export to one ONNX file at ``path``: inputs named after ``specs`` (string dims dynamic), outputs
        named ``output`` / ``output_N`` (dict keys when the model returns a dict).

        The torch.export-based exporter runs first; when it cannot capture the model, the TorchScript
        exporter does, and a note says why. ``options.exporter`` forces one (``dynamo`` or ``torchscript``).

        Raises:
            ExportError: the exporter(s) failed, or a dimension meant to be dynamic is fixed by the model.
        """
        import torch

        choice = _exporter_choice(options.exporter)
        path = Path(path)
        names = [spec.name for spec in specs]
        _check_spec_names(self.input_names(model), names)
        tensors = {spec.name: _to_tensor(example[spec.name]) for spec in specs}
        with Quiet(options.verbose):
            output_names = _output_names(model, tensors, names)
        is_script = isinstance(model, torch.jit.ScriptModule)
        is_program = isinstance(model, torch.export.ExportedProgram)
        if is_script and choice == "dynamo":
            raise ExportError(
                "a TorchScript model cannot go through torch.export", "use --exporter torchscript or omit it"
            )
        if is_program and choice == "torchscript":
            raise ExportError(
                "an ExportedProgram (.pt2) cannot go through the TorchScript exporter",
                "use --exporter dynamo or omit it",
            )
        notes: list[str] = []
        if not is_script and choice in (None, "dynamo"):
            try:
                exported = _export_dynamo(model, specs, tensors, output_names, path, options)
            except _ExporterFailed as failure:
                if choice == "dynamo" or is_program:
                    raise ExportError(
                        f"the torch.export-based exporter failed at {failure.stage}: {failure.summary}",
                        "fix that construct (https://pytorch.org/docs/stable/export.html)"
                        + ("" if is_program else ", or try --exporter torchscript")
                        + "; --verbose shows the exporter's own output",
                    ) from failure.__cause__
                what = (
                    "torch.export could not capture the model"
                    if failure.stage.startswith("capture")
                    else f"the torch.export-based exporter failed at {failure.stage}"
                )
                notes.append(
                    f"{what} ({failure.summary}); exported with the TorchScript exporter (dynamo=False) "
                    "instead"
                )
            else:
                opset = _finish_file(path, specs, "torch.export", from_program=is_program)
                return ExportResult("dynamo", opset, notes + exported)
        notes.extend(_export_torchscript(model, specs, tensors, output_names, path, options))
        opset = _finish_file(path, specs, "the TorchScript exporter", from_program=False)
        return ExportResult("torchscript", opset, notes)


# ======================================================================================= loading helpers
def _check_model_object(obj: Any, source: str) -> Any:
    import torch

    if isinstance(obj, torch.nn.Module | torch.export.ExportedProgram):
        return obj
    raise ModelLoadError(
        f"{source} made a {type(obj).__name__}, not a torch.nn.Module",
        "point at a function or class that returns an nn.Module (or an ExportedProgram)",
    )


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives hold ``code/`` and ``constants.pkl``; ``torch.save`` archives do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_model_file(path: Path, unsafe_pickle: bool) -> Any:
    import torch

    if not path.is_file():
        raise InputFileError(
            f"model file {path} does not exist" if not path.exists() else f"{path} is not a file",
            "give a .pt2, TorchScript .pt or path/to/file.py:factory",
        )
    if path.suffix.lower() == ".pt2":
        try:
            with Quiet(False):
                return torch.export.load(str(path))
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load {path} as an ExportedProgram: {_first_line(exc)}",
                "is it a torch.export.save file, complete and from a compatible torch version?",
            ) from exc
    if _is_torchscript_archive(path):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load TorchScript file {path}: {_first_line(exc)}", "is the file complete?"
            ) from exc
    obj = _torch_load(path, unsafe_pickle, "model")
    if isinstance(obj, torch.nn.Module):
        return obj
    if _state_dict_of(obj) is not None:
        raise ModelLoadError(
            f"{path} holds only weights (a state dict), not a model",
            f"give the model's code as path/to/file.py:factory and pass this file as --weights {path}",
        )
    raise ModelLoadError(
        f"{path} holds a {type(obj).__name__}, not a torch.nn.Module",
        "save the model with torch.export.save (.pt2) or torch.jit.save, or give a factory",
    )


def _torch_load(path: Path, unsafe_pickle: bool, what: str) -> Any:
    """``torch.load`` with ``weights_only=True``; the unrestricted unpickler only with ``unsafe_pickle``."""
    import pickle

    import torch

    if not path.is_file():
        raise InputFileError(f"{what} file {path} does not exist", "check the path")
    corrupt = f"cannot read {path}: it is corrupt or truncated"
    try:
        with Quiet(False):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _needs_full_unpickler(path, exc):
            raise ModelLoadError(f"{corrupt} ({_first_line(exc)})") from exc
        if not unsafe_pickle:
            raise UnsafeModelError(
                f"{path} is a pickled Python object (as torch.save(model) writes): unpickling it runs "
                "whatever code the file names, so convkit does not do it by default",
                "if you trust the file, pass --unsafe-allow-pickle; better, save a state dict and give it "
                "with --weights and a factory, or save the model with torch.export.save (.pt2)",
            ) from exc
        original = exc
    except Exception as exc:
        raise ModelLoadError(f"{corrupt} ({_first_line(exc)})") from exc
    # NOTE: why only here: the user said --unsafe-allow-pickle, i.e. they trust this file's code.
    try:
        with Quiet(False):
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot unpickle {path}: {type(exc).__name__}: {_first_line(exc)}",
            "the classes it was saved with must be importable (run from the training code's folder)",
        ) from original


def _needs_full_unpickler(path: Path, exc: Exception) -> bool:
    """Whether ``weights_only`` refused a readable pickle (it names a class or function to import), as
    opposed to failing on bytes that are no pickle at all.

    NOTE: why the header too: a plain ``pickle.dump`` (protocol 4, a FRAME opcode) fails with "Unsupported
    operand" before any global is seen, like random bytes do; its 0x80 0x02..0x05 header tells them apart.
    """
    if "unsupported global" in str(exc).lower():
        return True
    if zipfile.is_zipfile(path):
        return "weights only load failed" in str(exc).lower()
    with path.open("rb") as stream:
        header = stream.read(2)
    return len(header) == 2 and header[0] == 0x80 and 2 <= header[1] <= 5


def _state_dict_of(obj: Any) -> dict[str, Any] | None:
    """The tensors of a state dict, unwrapping ``{"state_dict": ...}``-style checkpoints; else ``None``."""
    import torch

    if not isinstance(obj, Mapping):
        return None
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return dict(obj)
    for key in _CHECKPOINT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, torch.nn.Module):
            return dict(inner.state_dict())
        found = _state_dict_of(inner)
        if found is not None:
            return found
    return None


def _load_weights(model: Any, path: Path, unsafe_pickle: bool) -> None:
    import torch

    obj = _torch_load(path, unsafe_pickle, "--weights")
    state = dict(obj.state_dict()) if isinstance(obj, torch.nn.Module) else _state_dict_of(obj)
    if state is None:
        keys = f" (keys: {', '.join(map(str, list(obj)[:8]))})" if isinstance(obj, Mapping) else ""
        raise ModelLoadError(
            f"--weights {path} holds a {type(obj).__name__}{keys}, not a state dict of tensors",
            "save it with torch.save(model.state_dict(), path)",
        )
    expected = model.state_dict()
    # NOTE: why: checkpoints saved from DataParallel / DistributedDataParallel prefix every key "module.".
    if all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in expected):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{len(found)} {label}: {', '.join(found[:6])}{', ...' if len(found) > 6 else ''}"
            for label, found in (
                ("missing key(s)", missing),
                ("unexpected key(s)", unexpected),
                ("shape mismatch(es) (checkpoint vs model)", mismatched),
            )
            if found
        ]
        raise ModelLoadError(
            f"--weights {path} does not fit {type(model).__name__}: {'; '.join(problems)}",
            "is the checkpoint from this architecture (and this factory's configuration)?",
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelLoadError(f"loading --weights {path} failed: {_first_line(exc)}") from exc


# ========================================================================================= input helpers
def _forward_input_names(model: Any) -> list[str] | None:
    """Required parameters of ``forward``; ``None`` when it has none (all optional, or ``*args``).

    NOTE: why required ones only: the core checks given names against these exactly, and optional inputs
    (masks, flags) are usually left at their defaults. With ``None`` the core takes the user's names as
    they are, which lets a model whose inputs are all optional (``input_ids=None, ...``) be fed any subset;
    ``_call_arguments`` still orders them and rejects names ``forward`` does not take.
    """
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError, AttributeError):
        return None
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    required = [
        p.name
        for p in params
        if p.kind is not inspect.Parameter.VAR_KEYWORD and p.default is inspect.Parameter.empty
    ]
    return required or None


def _script_input_names(model: Any) -> list[str] | None:
    try:
        arguments = model.forward.schema.arguments[1:]
    except Exception:
        return None
    return [a.name for a in arguments if not a.has_default_value()] or None


def _user_input_specs(program: Any) -> list[Any]:
    from torch.export.graph_signature import InputKind

    return [spec for spec in program.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT]


def _placeholder_name(spec: Any) -> str:
    return str(getattr(spec.arg, "name", spec.target))


def _placeholder_value(program: Any, name: str) -> Any:
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == name:
            return node.meta.get("val")
    return None


def _check_spec_names(known: list[str] | None, given: list[str]) -> None:
    if known is not None and sorted(known) != sorted(given) and not set(known) <= set(given):
        raise DataError(
            f"input names {', '.join(given)} do not match the model's inputs",
            f"expected: {', '.join(known)}",
        )


def _parameter_order(model: Any) -> list[str] | None:
    """Every input name ``forward`` (or the schema / program) accepts, in order."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return [_placeholder_name(spec) for spec in _user_input_specs(model)]
    if isinstance(model, torch.jit.ScriptModule):
        try:
            return [a.name for a in getattr(model.forward, "schema").arguments[1:]]  # noqa: B009
        except Exception:
            return None
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return [p.name for p in params if p.kind is not p.VAR_KEYWORD]


def _call_arguments(model: Any, inputs: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional arguments in ``forward`` order while no parameter is skipped, keyword ones after.

    Raises:
        DataError: a name ``forward`` does not take.
    """
    order = _parameter_order(model)
    tensors = {name: _to_tensor(value) for name, value in inputs.items()}
    if order is None:
        return tuple(tensors.values()), {}
    unknown = [name for name in tensors if name not in order]
    if unknown:
        raise DataError(
            f"the model's forward() takes no input named {', '.join(unknown)}",
            f"it takes: {', '.join(order)}",
        )
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name in order:
        if name not in tensors:
            continue
        if kwargs or len(args) != order.index(name):
            kwargs[name] = tensors[name]
        else:
            args.append(tensors[name])
    return tuple(args), kwargs


def _call_model(model: Any, inputs: Mapping[str, Any]) -> Any:
    """Call the model eagerly without gradients.

    Raises:
        DataError: the model raised on these inputs (wrong shapes or dtypes, most often).
    """
    import torch

    args, kwargs = _call_arguments(model, inputs)
    target = _callable(model)
    try:
        with torch.no_grad():
            return target(*args, **kwargs)
    except Exception as exc:
        shapes = ", ".join(f"{name} {tuple(np.shape(value))}" for name, value in inputs.items())
        raise DataError(
            f"the model raised {type(exc).__name__} on inputs {shapes}: {_first_line(exc)}",
            "check the input shapes and dtypes (--input NAME:DIMS[:DTYPE]); --debug shows the traceback",
        ) from exc


def _input_order(model: Any, names: Sequence[str]) -> list[str]:
    """``names`` in the order ``_call_arguments`` passes them (the order of the exported graph's inputs)."""
    order = _parameter_order(model)
    return list(names) if order is None else [name for name in order if name in names]


def _callable(model: Any) -> Any:
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    if isinstance(model, torch.nn.Module) and model.training:
        model.eval()
    return model


def _to_tensor(value: Any) -> torch.Tensor:
    import torch

    if isinstance(value, torch.Tensor):
        return value
    # NOTE: why a copy: from_numpy shares memory and warns on read-only arrays (np.load, test data).
    return torch.from_numpy(np.array(value, copy=True))


def _to_numpy(value: Any) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().resolve_conj().resolve_neg().numpy()
    return np.asarray(value)


# ======================================================================================== output helpers
def _flatten_outputs(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(path, leaf)`` pairs in the order torch.export flattens outputs: sequences in order, mappings
    (and ModelOutput-style dicts) by insertion order, named tuples by field; ``None`` dropped."""
    import torch

    if value is None:
        return
    if isinstance(value, torch.Tensor | int | float | bool | np.ndarray):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flatten_outputs(item, (*path, str(key)))
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for field_name in value._fields:
            yield from _flatten_outputs(getattr(value, field_name), (*path, field_name))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _flatten_outputs(item, (*path, str(index)))
    else:
        raise ExportError(
            f"the model returns a {type(value).__name__}, which convkit cannot flatten into tensors",
            "return tensors, or tuples, lists or dicts of them",
        )


def _output_names(model: Any, tensors: Mapping[str, Any], input_names: Sequence[str]) -> list[str]:
    """``output`` for one output, ``output_N`` for a sequence, the keys (``logits``) for a dict."""
    outputs = _call_model(model, tensors)
    paths = [path for path, _ in _flatten_outputs(outputs)]
    return output_names(paths, isinstance(outputs, Mapping), input_names)


# ============================================================================================= exporting
class _ExporterFailed(Exception):
    """An exporter failed; ``stage`` says where, ``summary`` is one line for notes and errors."""

    def __init__(self, stage: str, summary: str) -> None:
        super().__init__(f"{stage}: {summary}")
        self.stage = stage
        self.summary = summary


def _exporter_choice(exporter: str | None) -> str | None:
    if exporter is None or exporter.strip().lower() in ("", "auto"):
        return None
    key = exporter.strip().lower()
    key = _EXPORTER_ALIASES.get(key, key)
    if key not in _EXPORTERS:
        raise ExportError(
            f"unknown exporter {exporter!r} for torch",
            "choose dynamo (torch.export-based, the default) or torchscript (the legacy exporter)",
        )
    return key


def _dynamic_shapes(model: Any, specs: Sequence[InputSpec]) -> dict[str, Any] | tuple[Any, ...] | None:
    """``{input: {axis: Dim(symbol)}}``; one ``Dim`` per symbol, so inputs that share one stay equal.

    A ``forward(*args)`` gets a tuple in argument order instead: there are no parameter names to key by.
    """
    import torch

    dims: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    for spec in specs:
        axes = {}
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, str):
                axes[axis] = dims.setdefault(dim, torch.export.Dim(dim))
        shapes[spec.name] = axes or None
    if not any(shapes.values()):
        return None
    if _parameter_order(model) is None:
        return _star_args_shapes(model, list(shapes.values()))
    return shapes


def _star_args_shapes(model: Any, shapes: list[Any]) -> dict[str, Any] | tuple[Any, ...]:
    """``forward(x, *rest)``: the leading parameters by name, the rest as one tuple under ``rest``."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return tuple(shapes)
    keyed: dict[str, Any] = {}
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            keyed[param.name] = tuple(shapes)
            return keyed
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            keyed[param.name] = shapes.pop(0) if shapes else None
    return tuple(shapes)


def _export_dynamo(
    model: Any,
    specs: Sequence[InputSpec],
    tensors: Mapping[str, Any],
    output_names: list[str],
    path: Path,
    options: ExportOptions,
) -> list[str]:
    """Run ``torch.onnx.export(dynamo=True)``; returns notes. Raises ``_ExporterFailed``."""
    import torch

    from convkit.graph.conform import EXTERNAL_DATA_THRESHOLD

    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise _ExporterFailed(
            "setup", f"onnxscript is not installed ({exc}); pip install 'convkit[torch]'"
        ) from exc
    args, kwargs = _call_arguments(model, tensors)
    is_program = isinstance(model, torch.export.ExportedProgram)
    ordered = _input_order(model, [spec.name for spec in specs])
    with Quiet(options.verbose) as quiet:
        try:
            program = torch.onnx.export(
                model,
                args,
                kwargs=kwargs or None,
                dynamo=True,
                # NOTE: why False rather than None: None prints "[torch.onnx] Obtain model graph ..." lines
                verbose=bool(options.verbose),
                input_names=ordered,
                output_names=output_names,
                opset_version=options.opset,
                dynamic_shapes=None if is_program else _dynamic_shapes(model, specs),
                optimize=True,
            )
        except Exception as exc:
            raise _dynamo_failure(exc) from exc
        if program is None:
            raise _ExporterFailed("export", "torch.onnx.export returned no ONNX program")
        try:
            external = _initializer_bytes(program) > EXTERNAL_DATA_THRESHOLD
            program.save(str(path), external_data=external)
        except Exception as exc:
            raise _ExporterFailed("saving the ONNX file", _first_line(exc)) from exc
    notes = _warning_notes(quiet.warnings)
    if external:
        notes.append(f"weights exceed 2 GB: written as external data beside {path.name}")
    return notes


def _dynamo_failure(exc: Exception) -> _ExporterFailed:
    """One line naming the failing construct, from the exporter's multi-page message.

    NOTE: why parse text: torch.onnx raises its private ``TorchExportError`` (capture) and ``ConversionError``
    (translation) with the original exception as ``__cause__`` and the user's line in the message; there is
    no public structured form.
    """
    text = _ANSI.sub("", str(exc))
    kind = type(exc).__name__
    stage = {
        "TorchExportError": "capture (torch.export)",
        "ConversionError": "translation to ONNX",
        "DispatchError": "translation to ONNX",
        "GraphConstructionError": "translation to ONNX",
    }.get(kind, "export")
    cause = exc.__cause__
    if cause is not None:
        summary = f"{type(cause).__name__}: {_first_line(cause)}"
    else:
        match = re.search(r"## Exception summary\s+<class '[\w.]*?(\w+)'>: (.+)", text)
        summary = f"{match.group(1)}: {match.group(2).strip()}" if match else f"{kind}: {_first_line(text)}"
    where = re.search(
        r'The following call raised this error:\s+File "([^"]+)", line (\d+), in \w+\s+(.+)', text
    )
    if where:
        summary += f" at {Path(where.group(1)).name}:{where.group(2)} `{where.group(3).strip()}`"
    return _ExporterFailed(stage, summary)


def _export_torchscript(
    model: Any,
    specs: Sequence[InputSpec],
    tensors: Mapping[str, Any],
    output_names: list[str],
    path: Path,
    options: ExportOptions,
) -> list[str]:
    """Run ``torch.onnx.export(dynamo=False)`` with ``dynamic_axes``; returns notes (tracer warnings)."""
    import torch

    args, kwargs = _call_arguments(model, tensors)
    if kwargs:
        # NOTE: why: the TorchScript exporter passes a trailing dict as keyword arguments
        args = (*args, kwargs)
    ordered = _input_order(model, [spec.name for spec in specs])
    dynamic_axes = {
        spec.name: {axis: dim for axis, dim in enumerate(spec.dims) if isinstance(dim, str)} for spec in specs
    }
    dynamic_axes = {name: axes for name, axes in dynamic_axes.items() if axes}
    with Quiet(options.verbose) as quiet:
        try:
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                input_names=ordered,
                output_names=output_names,
                dynamic_axes=dynamic_axes or None,
                opset_version=options.opset,
            )
        except Exception as exc:
            raise ExportError(
                f"the TorchScript exporter failed: {type(exc).__name__}: {_first_line(exc)}",
                "--verbose shows the exporter's own output",
            ) from exc
    return _warning_notes(quiet.warnings)


def _warning_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """Tracer warnings matter (the trace may not generalise); the rest is exporter chatter."""
    notes: list[str] = []
    for item in caught:
        category = item.category.__name__
        if category != "TracerWarning":
            continue
        text = _first_line(item.message)
        note = (
            f"the TorchScript tracer warned at {Path(item.filename).name}:{item.lineno}: {text} "
            "(the exported graph follows the path the example inputs took)"
        )
        if note not in notes:
            notes.append(note)
    return notes


def _initializer_bytes(program: Any) -> int:
    try:
        return sum(
            int(value.const_value.nbytes)
            for value in program.model.graph.initializers.values()
            if value.const_value is not None
        )
    except Exception:
        return 0


def _finish_file(path: Path, specs: Sequence[InputSpec], exporter: str, from_program: bool) -> int:
    """Conform the written file to ``specs`` (``convkit.graph.conform``); returns the file's opset.

    NOTE: why read without external data: the proto keeps its references to the data file torch wrote
    beside it, and nothing here reads a weight.
    """
    import onnx

    from convkit.graph.conform import FixedDimMessage, conform, save
    from convkit.graph.model import default_domain_opset

    model = onnx.load(str(path), load_external_data=False)
    if from_program:
        fixed = FixedDimMessage(
            "the .pt2 was exported with that size fixed", "re-export the .pt2 with dynamic_shapes"
        )
    else:
        fixed = FixedDimMessage(
            "the model does not work for other sizes as written", "make the model size-generic"
        )
    conform(model, specs, exporter=exporter, fixed_dim=fixed)
    save(model, path)
    return default_domain_opset(model)


def _first_line(value: Any) -> str:
    text = _ANSI.sub("", str(value)).strip()
    return text.splitlines()[0].strip() if text else type(value).__name__
