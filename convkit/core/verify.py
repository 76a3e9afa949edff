"""Verify: run a model in onnxruntime on labelled data sets and compare with the expected outputs, stored
(``verify_testcase``) or computed by the framework (``verify_model``, ``verify_native``); each returns a
``ParityReport``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.artifacts import (
    list_test_data_sets,
    load_arrays,
    read_test_data_set,
)
from convkit.core.compare import ParityReport, Tolerance, compare_outputs
from convkit.core.degenerate import degenerate_outputs
from convkit.core.inputs import (
    DEFAULT_SEED,
    InputSpec,
    check_names,
    verification_data_sets,
)
from convkit.core.manifest import test_data_folder
from convkit.core.run import open_session
from convkit.core.runtime import SessionOptions, TensorSpec, short_provider_name
from convkit.errors import ConvkitError, DataError, InputFileError
from convkit.frontends import (
    Frontend,
    LoadOptions,
    Releasable,
    frontend_info,
    resolve_source,
)
from convkit.graph.model import OnnxModel, load_onnx
from convkit.progress import step

Runtimes = SessionOptions | Sequence[SessionOptions] | None


DataCheck = tuple[str, Mapping[str, np.ndarray], Mapping[str, Any]]


def verify_testcase(
    path: str | os.PathLike[str],
    *,
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
    model = load_onnx(path, weights=localize is not None)
    data_sets = list_test_data_sets(test_data_folder(model.path)) or list_test_data_sets(model.path.parent)
    notes = check_recorded_test_data(model.path, data_sets)
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
    report = check_data_sets(model, "stored outputs", checks, tolerance, options, localize)
    report.notes[:0] = notes
    return report


def check_recorded_test_data(model_path: Path, data_sets: Sequence[Path]) -> list[str]:
    """Hold the test data sets against what the model's export recorded in its manifest; returns notes.

    NOTE: why the data sets' own fingerprint: two models exported into one folder by an older convkit (or by
    hand) can leave one model's data beside the other; comparing then fails with baffling input names, when
    the truth is that the data are not this model's. A model changed since its export (optimized,
    re-saved) is still compared against its recorded outputs, with a note.

    Raises:
        DataError: a data set the manifest recorded for this model is no longer the one on disk.
    """
    from convkit.core.manifest import folder_digest, read_manifest, sha256_file

    manifest = read_manifest(model_path)
    if manifest is None:
        return []
    notes = []
    if manifest.get("sha256") not in (None, sha256_file(model_path)):
        notes.append(
            f"{model_path.name} changed since it was exported (its sha256 differs from its manifest)"
        )
    recorded, digest = manifest.get("test_data"), manifest.get("test_data_sha256")
    for folder in data_sets:
        if recorded and digest and folder == model_path.parent / recorded and folder_digest(folder) != digest:
            raise DataError(
                f"{folder} is not the test data recorded for {model_path.name} at its export "
                "(another model's, or changed since)",
                "export the model again, or verify it against its framework with --source",
            )
    return notes


def check_data_sets(
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
    levels = {config.optimization for config in configs if config is not None}
    tol = tolerance or Tolerance()
    report = ParityReport(
        model=str(model.path),
        reference=reference,
        provider="",
        notes=list(model.notes),
        atol=tol.atol,
        rtol=tol.rtol,
    )
    labels: list[str] = []
    # NOTE: why one session at a time: each holds its own copy of the weights
    for config in configs:
        session = open_session(model, config, checks[0][1])
        label = short_provider_name(session.provider)
        label += f"/{session.options.optimization}" if len(levels) > 1 else ""
        labels.append(label)
        report.notes.extend(note for note in session.notes if note not in report.notes)
        for index, (data_set, inputs, expected) in enumerate(checks, 1):
            step(f"verifying data set {index}/{len(checks)} in onnxruntime ({label})")
            for comparison in compare_outputs(expected, session.run(inputs), tol, data_set=data_set):
                comparison.runtime = label if len(configs) > 1 else ""
                report.comparisons.append(comparison)
        del session
    report.provider = ",".join(dict.fromkeys(labels))
    report.warnings = degenerate_outputs(checks)
    if localize:
        step(f"localizing the first diverging node against {localize}")
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
            notes = [*found.notes, found.describe()]
            found = localize(model, data_sets[label], "reference", tol)
            found.notes[:0] = [*notes, "fell back to onnx's reference implementation"]
    else:
        reference: str | OnnxModel = oracle if oracle in ("reference", "unoptimized") else load_onnx(oracle)
        found = localize(model, data_sets[label], reference, tol)
    found.notes.append(f"on data set {label}")
    report.localization = found.to_dict()
    report.localized_values = found.compared
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


def outputs_by_name(values: Sequence[np.ndarray], names: Sequence[str], frontend: Frontend) -> dict[str, Any]:
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
    *,
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
    model = load_onnx(path, weights=localize is not None)
    if data is not None:
        feeds = load_arrays(data, model.input_names)
        check_names(list(feeds), model.input_names, f"the data in {data}")
        data_sets = [(Path(data).name, feeds)]
    else:
        unknown = [s.name for s in input_specs if s.name not in model.input_names]
        if unknown:
            check_names([s.name for s in input_specs], model.input_names, "--input")
        # NOTE: why a session closed before the framework loads: onnxruntime's view of the inputs (after an
        # opset upgrade, say) decides the data, and its weights and the framework's never meet in memory
        specs = specs_from_session(open_session(model).inputs, input_specs)
        data_sets = verification_data_sets(specs, seed, example_sizes(model, specs))
    step(f"loading {source}")
    frontend, preloaded = resolve_source(source, framework)
    native = frontend.load(source, load_options or LoadOptions(), preloaded)
    return _verify(model, frontend, native, data_sets, tolerance, options, localize, owned=True)


def example_sizes(model: OnnxModel, specs: Sequence[InputSpec]) -> dict[str, int]:
    """The sizes the export's example gave the symbolic dimensions past the first axis (a sequence, an
    audio length), read from the model's ``test_data_set_0``; empty without one. A symbol that is also some
    input's first axis is a batch, checked at 1 and 3 as usual."""
    folder = test_data_folder(model.path) / "test_data_set_0"
    if not folder.is_dir():
        return {}
    try:
        inputs, _ = read_test_data_set(folder, model.input_names)
    except ConvkitError:
        return {}
    sizes: dict[str, int] = {}
    batches = set()
    for spec in specs:
        example = inputs.get(spec.name)
        for axis, dim in enumerate(spec.dims):
            if not isinstance(dim, str):
                continue
            if axis == 0:
                batches.add(dim)
            elif example is not None and example.ndim == len(spec.dims):
                sizes.setdefault(dim, int(example.shape[axis]))
    return {sym: size for sym, size in sizes.items() if sym not in batches and size > 0}


def verify_native(
    model: OnnxModel,
    frontend: Frontend,
    native: Any,
    *,
    data_sets: Sequence[tuple[str, Mapping[str, np.ndarray]]],
    tolerance: Tolerance | None = None,
    options: Runtimes = None,
    localize: str | None = None,
) -> ParityReport:
    """Compare onnxruntime with an already loaded framework model on labelled data sets."""
    return _verify(model, frontend, native, data_sets, tolerance, options, localize, owned=False)


def _verify(
    model: OnnxModel,
    frontend: Frontend,
    native: Any,
    data_sets: Sequence[tuple[str, Mapping[str, np.ndarray]]],
    tolerance: Tolerance | None,
    options: Runtimes,
    localize: str | None,
    *,
    owned: bool,
) -> ParityReport:
    """``verify_native``; an ``owned`` model (``verify_model`` loaded it) has its weights freed once its
    outputs are computed, unless ``localize`` needs it (see ``core.export._export``)."""
    # NOTE: why a runner name: where the framework itself cannot run (Caffe) or goes by another name
    # (Theano's successor PyTensor), the report names what computed the reference outputs.
    runner = frontend_info(frontend.name).native_runner or frontend.name
    reference = f"{runner} {frontend.versions().get(runner, '')}".strip()
    step(f"running {reference} on {len(data_sets)} data set(s)")
    checks = [
        (label, feeds, outputs_by_name(frontend.run(native, feeds), model.output_names, frontend))
        for label, feeds in data_sets
    ]
    if owned and not localize and isinstance(frontend, Releasable):
        frontend.release(native)
    return check_data_sets(model, reference, checks, tolerance, options, localize, (frontend, native))
