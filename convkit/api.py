"""What the CLI and users call: ``inspect_model``, ``run_model``, ``verify_testcase``, ``verify_model``,
``export_model``. Each returns data; rendering is ``convkit.report.parity``'s job."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.artifacts import (
    list_test_data_sets,
    load_arrays,
    move_into,
    read_test_data_set,
    staging_dir,
    write_test_data_set,
)
from convkit.core.compare import ParityReport, Tolerance, compare_outputs
from convkit.core.inputs import (
    DEFAULT_SEED,
    EXPORT_SYMBOLIC_SIZE,
    InputSpec,
    check_names,
    make_static,
    random_inputs,
    specs_from_arrays,
    verification_data_sets,
)
from convkit.core.manifest import write_manifest
from convkit.core.runtime import RuntimeSession, SessionOptions, TensorSpec, short_provider_name
from convkit.errors import DataError, InputFileError
from convkit.frontends import ExportOptions, ExportResult, Frontend, LoadOptions, resolve_source
from convkit.graph.info import ModelSummary, summarize
from convkit.graph.model import OnnxModel, load_onnx


def inspect_model(path: str | os.PathLike[str]) -> ModelSummary:
    """Summarize an ONNX file (see ``convkit.graph.info.ModelSummary``)."""
    return summarize(load_onnx(path))


def _static_shapes(data: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(np.shape(value)) for name, value in data.items()}


def open_session(
    model: OnnxModel, options: SessionOptions | None = None, example: Mapping[str, np.ndarray] | None = None
) -> RuntimeSession:
    """An onnxruntime session; ``example`` data lets old-opset models with symbolic dims be upgraded."""
    return RuntimeSession(model, options, static_shapes=_static_shapes(example) if example else None)


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    provider: str
    notes: list[str] = field(default_factory=list)


def run_model(
    path: str | os.PathLike[str], data: str | os.PathLike[str], options: SessionOptions | None = None
) -> RunResult:
    """Run an ONNX model on ``data`` (``.npz``, ``.npy`` or a ``test_data_set_N`` folder)."""
    model = load_onnx(path)
    feeds = load_arrays(data, model.input_names)
    session = open_session(model, options, feeds)
    outputs = session.run(feeds)
    return RunResult(outputs, short_provider_name(session.provider), model.notes + session.notes)


def verify_testcase(
    path: str | os.PathLike[str],
    tolerance: Tolerance | None = None,
    options: Runtimes = None,
    localize: str | None = None,
) -> ParityReport:
    """Run every ``test_data_set_N`` beside a model in onnxruntime and compare with the stored outputs.

    ``path`` is a test-case folder (``model.onnx`` + ``test_data_set_N/``) or the model file itself.
    ``options`` may list several runtime configurations (providers, optimization levels): each is checked.
    ``localize`` (an oracle: ``reference``, ``unoptimized`` or a reference model's path) also searches for
    the first diverging node, on the first data set that fails (or the first one).
    """
    model = load_onnx(path)
    data_sets = list_test_data_sets(model.path.parent)
    if not data_sets:
        raise InputFileError(
            f"no test_data_set_N folders beside {model.path}",
            "export with test data (the default), or verify against the framework with --source",
        )
    loaded = [read_test_data_set(d, model.input_names, model.output_names) for d in data_sets]
    for folder, (_, outputs) in zip(data_sets, loaded, strict=True):
        if not outputs:
            raise DataError(f"{folder} holds no output_N.pb files to compare with")
    checks = [
        (folder.name, inputs, outputs) for folder, (inputs, outputs) in zip(data_sets, loaded, strict=True)
    ]
    return _check(model, "stored outputs", checks, tolerance, options, localize)


Runtimes = SessionOptions | Sequence[SessionOptions] | None
DataCheck = tuple[str, Mapping[str, np.ndarray], Mapping[str, Any]]


def _check(
    model: OnnxModel,
    reference: str,
    checks: Sequence[DataCheck],
    tolerance: Tolerance | None,
    runtimes: Runtimes,
    localize: str | None,
    framework: tuple[Frontend, Any] | None = None,
) -> ParityReport:
    """Run each (label, inputs, expected outputs) on every runtime configuration and compare.

    NOTE: why several runtimes in one report: a model that holds on the CPU provider can break on CUDA or
    under one optimization level; one command and one report show which configuration is at fault.
    """
    configs = [runtimes] if isinstance(runtimes, SessionOptions) or runtimes is None else list(runtimes)
    sessions = [open_session(model, config, checks[0][1]) for config in configs]
    levels = {config.optimization for config in configs if config is not None}
    labels = [
        short_provider_name(s.provider) + (f"/{s.options.optimization}" if len(levels) > 1 else "")
        for s in sessions
    ]
    tol = tolerance or Tolerance()
    report = ParityReport(
        model=str(model.path),
        reference=reference,
        provider=",".join(dict.fromkeys(labels)),
        notes=[*model.notes, *(note for s in sessions for note in s.notes)],
        atol=tol.atol,
        rtol=tol.rtol,
    )
    for session, label in zip(sessions, labels, strict=True):
        for data_set, inputs, expected in checks:
            for comparison in compare_outputs(expected, session.run(inputs), tol, data_set=data_set):
                comparison.runtime = label if len(sessions) > 1 else ""
                report.comparisons.append(comparison)
    if localize:
        feeds = {label: inputs for label, inputs, _ in checks}
        _localize_into(report, model, feeds, localize, tol, framework)
    return report


def _localize_into(
    report: ParityReport,
    model: OnnxModel,
    data_sets: Mapping[str, Mapping[str, np.ndarray]],
    oracle: str,
    tol: Tolerance,
    framework: tuple[Frontend, Any] | None = None,
) -> None:
    """Run localization on the first failing data set (else the first) and attach it to ``report``.

    ``oracle`` ``auto`` means the framework's own layers when there is a framework model, else onnx's
    reference implementation.
    """
    from convkit.diagnose.localize import localize, localize_against_framework

    failing = [c.data_set for c in report.comparisons if not c.passed]
    label = failing[0] if failing else next(iter(data_sets))
    automatic = oracle == "auto"
    if automatic:
        oracle = "framework" if framework is not None else "reference"
    if oracle == "framework":
        if framework is None:
            raise InputFileError("--localize framework needs --source", "or use reference / unoptimized")
        found = localize_against_framework(model, framework[0], framework[1], data_sets[label], tol)
        if automatic and found.first is None:
            # NOTE: why fall back: no paired layer diverging (or none paired) says nothing about the nodes in
            # between; the specification's reference implementation still checks every node.
            notes = [*found.notes, f"no {found.oracle} diverge ({found.checked_values} checked)"]
            found = localize(model, data_sets[label], "reference", tol)
            found.notes[:0] = [*notes, "fell back to onnx's reference implementation"]
    else:
        reference: str | OnnxModel = oracle if oracle in ("reference", "unoptimized") else load_onnx(oracle)
        found = localize(model, data_sets[label], reference, tol)
    found.notes.append(f"on data set {label}")
    report.localization = found.to_dict()
    report.notes.append(found.describe())


def specs_from_session(inputs: Sequence[TensorSpec], given: Sequence[InputSpec] = ()) -> list[InputSpec]:
    """Input specs read off the ONNX model (unknown dims become symbolic); user specs win by name."""
    by_name = {spec.name: spec for spec in given}
    specs = []
    for position, tensor in enumerate(inputs):
        if tensor.name in by_name:
            specs.append(by_name[tensor.name])
            continue
        dims: list[int | str] = [
            d
            if isinstance(d, int) and d > 0
            else (d if isinstance(d, str) and d else f"dim{position}_{axis}")
            for axis, d in enumerate(tensor.shape)
        ]
        specs.append(InputSpec(tensor.name, dims, tensor.dtype))
    return specs


def _outputs_by_name(
    values: Sequence[np.ndarray], names: Sequence[str], frontend: Frontend
) -> dict[str, Any]:
    if len(values) != len(names):
        raise DataError(
            f"{frontend.name} produced {len(values)} outputs but the ONNX model has {len(names)} "
            f"({', '.join(names)})",
            "is the ONNX file exported from this source?",
        )
    return dict(zip(names, values, strict=True))


def verify_model(
    path: str | os.PathLike[str],
    source: str,
    framework: str | None = None,
    input_specs: Sequence[InputSpec] = (),
    data: str | os.PathLike[str] | None = None,
    load_options: LoadOptions | None = None,
    tolerance: Tolerance | None = None,
    options: Runtimes = None,
    seed: int = DEFAULT_SEED,
    localize: str | None = None,
) -> ParityReport:
    """Compare onnxruntime with the source framework on the same inputs.

    Without ``data``, every symbolic dimension is checked at two sizes (seeded random inputs). ``localize``
    (an oracle, as for ``verify_testcase``) searches for the first diverging node.
    """
    model = load_onnx(path)
    frontend, preloaded = resolve_source(source, framework)
    native = frontend.load(source, load_options or LoadOptions(), preloaded)
    if data is not None:
        feeds = load_arrays(data, model.input_names)
        check_names(list(feeds), model.input_names, f"the data in {data}")
        data_sets = [(Path(data).name, feeds)]
    else:
        session_probe = open_session(model)
        unknown = [s.name for s in input_specs if s.name not in model.input_names]
        if unknown:
            check_names([s.name for s in input_specs], model.input_names, "--input")
        data_sets = verification_data_sets(specs_from_session(session_probe.inputs, input_specs), seed)
    return verify_native(model, frontend, native, data_sets, tolerance, options, localize)


def verify_native(
    model: OnnxModel,
    frontend: Frontend,
    native: Any,
    data_sets: Sequence[tuple[str, Mapping[str, np.ndarray]]],
    tolerance: Tolerance | None = None,
    options: Runtimes = None,
    localize: str | None = None,
) -> ParityReport:
    """Compare onnxruntime with an already loaded framework model on labelled data sets."""
    # NOTE: why a runner name: where the framework itself cannot run (Caffe) or goes by another name
    # (Theano's successor PyTensor), the report names what computed the reference outputs.
    runner = getattr(frontend, "native_runner", frontend.name)
    reference = f"{runner} {frontend.versions().get(runner, '')}".strip()
    checks = [
        (label, feeds, _outputs_by_name(frontend.run(native, feeds), model.output_names, frontend))
        for label, feeds in data_sets
    ]
    return _check(model, reference, checks, tolerance, options, localize, (frontend, native))


@dataclass
class ExportSummary:
    """What ``export_model`` wrote and how the export checked out on its example data."""

    model_path: Path
    manifest_path: Path
    test_data_dir: Path | None
    framework: str
    export: ExportResult
    specs: list[InputSpec]
    report: ParityReport


def _export_specs(
    frontend: Frontend,
    native: Any,
    input_specs: Sequence[InputSpec],
    feeds: Mapping[str, np.ndarray] | None,
    static: bool,
) -> list[InputSpec]:
    names = frontend.input_names(native)
    if input_specs:
        specs = list(input_specs)
        if names is not None:
            check_names([s.name for s in specs], names, "--input")
            order = {name: k for k, name in enumerate(names)}
            specs.sort(key=lambda s: order[s.name])
    elif feeds is not None:
        if names is not None:
            check_names(list(feeds), names, "the --data")
            feeds = {name: feeds[name] for name in names}
        specs = specs_from_arrays(feeds, dynamic_batch=not static)
    else:
        declared = frontend.input_specs(native)
        if declared is None:
            listing = f" ({', '.join(names)})" if names else ""
            raise DataError(
                f"the model does not declare its input shapes{listing}",
                "give them with --input NAME:DIMS[:DTYPE] (e.g. x:batch,3,224,224) or --data FILE.npz",
            )
        specs = declared
    return make_static(specs) if static else specs


def export_model(
    source: str,
    output: str | os.PathLike[str],
    framework: str | None = None,
    input_specs: Sequence[InputSpec] = (),
    data: str | os.PathLike[str] | None = None,
    static: bool = False,
    load_options: LoadOptions | None = None,
    export_options: ExportOptions | None = None,
    test_data: bool = True,
    tolerance: Tolerance | None = None,
    options: Runtimes = None,
    seed: int = DEFAULT_SEED,
) -> ExportSummary:
    """Export ``source`` to ONNX at ``output``, check parity on the example inputs, write the evidence.

    Beside the model: ``test_data_set_0/`` (inputs and the framework's outputs, standard ONNX layout) unless
    ``test_data`` is off, and ``<stem>.manifest.json``. The model appears only after the export succeeded
    and onnxruntime loaded it.
    """
    output = Path(output)
    if output.suffix != ".onnx":
        raise InputFileError(f"output {output} should end in .onnx", "e.g. -o out/model.onnx")
    frontend, preloaded = resolve_source(source, framework)
    native = frontend.load(source, load_options or LoadOptions(), preloaded)
    feeds = load_arrays(data, frontend.input_names(native) or []) if data is not None else None
    specs = _export_specs(frontend, native, input_specs, feeds, static)
    example = dict(feeds) if feeds is not None else random_inputs(specs, EXPORT_SYMBOLIC_SIZE, seed)
    example = {spec.name: example[spec.name] for spec in specs}
    return export_native(
        frontend,
        native,
        specs,
        example,
        output,
        source,
        export_options,
        test_data,
        tolerance,
        options,
        seed if feeds is None else None,
    )


def export_native(
    frontend: Frontend,
    native: Any,
    specs: Sequence[InputSpec],
    example: Mapping[str, np.ndarray],
    output: str | os.PathLike[str],
    source: str,
    export_options: ExportOptions | None = None,
    test_data: bool = True,
    tolerance: Tolerance | None = None,
    options: Runtimes = None,
    seed: int | None = None,
) -> ExportSummary:
    """Export an already loaded framework model (see ``export_model``); ``source`` is recorded as given."""
    output = Path(output)
    reference = frontend.run(native, example)
    with staging_dir(output.parent) as staging:
        # NOTE: why a staging folder under the final name: an exporter may write external data beside the
        # model (``model.onnx.data``) and records that file name inside the model; exporting under the final
        # name and moving every file into place keeps the reference valid and nothing half-written visible.
        staged = staging / output.name
        result = frontend.export(native, specs, example, staged, export_options or ExportOptions())
        model = load_onnx(staged)
        expected = _outputs_by_name(reference, model.output_names, frontend)
        checks = [("export example", example, expected)]
        report = _check(model, frontend.name, checks, tolerance, options, None)
        report.model = str(output)
        report.notes.extend(result.notes)
        move_into(staging, output.parent, last=output.name)
    test_dir = write_test_data_set(output.parent, example, expected) if test_data else None
    manifest = write_manifest(
        output,
        {
            "framework": frontend.name,
            "source": source,
            "exporter": result.exporter,
            "opset": result.opset,
            "inputs": [spec.to_dict() for spec in specs],
            "outputs": [{"name": name, "dtype": np.asarray(v).dtype.name} for name, v in expected.items()],
            "test_data": test_dir.name if test_dir else None,
            "seed": seed,
            "notes": result.notes,
            "versions": frontend.versions(),
        },
    )
    return ExportSummary(output, manifest, test_dir, frontend.name, result, list(specs), report)
