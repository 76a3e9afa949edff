"""Export: load a framework model, export it to ONNX through its front end (and ``graph.conform``), check
parity on the example inputs, and write the evidence beside the model (test data set, manifest)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convkit.core.artifacts import (
    load_arrays,
    move_into,
    staging_dir,
    write_test_data_set,
)
from convkit.core.compare import ParityReport, Tolerance
from convkit.core.inputs import (
    DEFAULT_SEED,
    EXPORT_SYMBOLIC_SIZE,
    InputSpec,
    check_names,
    make_static,
    random_inputs,
    settle_dynamic_dims,
    specs_from_arrays,
)
from convkit.core.manifest import folder_digest, test_data_folder, write_manifest
from convkit.core.verify import Runtimes, check_data_sets, outputs_by_name
from convkit.errors import DataError, InputFileError, UnsupportedModelError
from convkit.frontends import (
    ExportOptions,
    ExportResult,
    Frontend,
    LoadOptions,
    Releasable,
    resolve_source,
)
from convkit.graph.model import OnnxModel, load_onnx
from convkit.progress import step


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
    """The specs to export with: ``--input`` as written (it overrides ``--data`` and ``--static``); else the
    data's shapes, the batch dynamic and every other axis dynamic where the model allows it (``--static``:
    all fixed); else the shapes the model declares (``--static``: fixed at the export size)."""
    names = frontend.input_names(native)
    if input_specs:
        specs = list(input_specs)
        if names is not None:
            check_names([s.name for s in specs], names, "--input")
            order = {name: k for k, name in enumerate(names)}
            specs.sort(key=lambda s: order[s.name])
        # NOTE: why --static does not touch them: a symbol in --input is the user saying "dynamic here"
        return specs
    if feeds is not None:
        if names is not None:
            check_names(list(feeds), names, "the --data")
            feeds = {name: feeds[name] for name in names}
        return specs_from_arrays(feeds, dynamic_batch=not static, dynamic_if_allowed=not static)
    declared = frontend.input_specs(native)
    if declared is None:
        listing = f" ({', '.join(names)})" if names else ""
        example = " ".join(f"--input {n}:batch,..." for n in names) if names else "--input x:batch,3,224,224"
        raise DataError(
            f"the model does not declare its input shapes{listing}",
            f"give them with --input NAME:DIMS[:DTYPE] (e.g. {example}) or --data FILE.npz",
        )
    return make_static(declared) if static else declared


def export_model(
    source: str,
    output: str | os.PathLike[str],
    *,
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
    force: bool = False,
) -> ExportSummary:
    """Export ``source`` to ONNX at ``output``, check parity on the example inputs, write the evidence.

    Beside the model: ``<stem>.manifest.json`` and, unless ``test_data`` is off, ``test_data_set_0/`` (the
    inputs and the framework's outputs, standard ONNX layout) in the model's own test-data folder
    (``convkit.core.manifest.test_data_folder``). The model appears only after the export succeeded and
    onnxruntime loaded it. A file or test data this export did not write before is replaced only with
    ``force``.

    Dims: ``input_specs`` as written; else, with ``data``, the batch and every other axis the model allows
    are dynamic (the front end decides, see ``InputSpec.dynamic_if_allowed``; ``static`` fixes them all);
    the summary's specs are the ones the exported file has.
    """
    _check_opset((export_options or ExportOptions()).opset)
    output = Path(output)
    if output.suffix != ".onnx":
        raise InputFileError(f"output {output} should end in .onnx", "e.g. -o out/model.onnx")
    if not force:
        _check_not_foreign(output, test_data)
    step(f"loading {source}")
    frontend, preloaded = resolve_source(source, framework)
    native = frontend.load(source, load_options or LoadOptions(), preloaded)
    feeds = load_arrays(data, frontend.input_names(native) or []) if data is not None else None
    specs = _export_specs(frontend, native, input_specs, feeds, static)
    example = dict(feeds) if feeds is not None else random_inputs(specs, EXPORT_SYMBOLIC_SIZE, seed)
    example = {spec.name: example[spec.name] for spec in specs}
    return _export(
        frontend,
        native,
        owned=True,
        specs=specs,
        example=example,
        output=output,
        source=source,
        export_options=export_options,
        test_data=test_data,
        tolerance=tolerance,
        options=options,
        seed=seed if feeds is None else None,
        force=True,  # checked above, before loading the model
    )


def export_native(
    frontend: Frontend,
    native: Any,
    *,
    specs: Sequence[InputSpec],
    example: Mapping[str, np.ndarray],
    output: str | os.PathLike[str],
    source: str,
    export_options: ExportOptions | None = None,
    test_data: bool = True,
    tolerance: Tolerance | None = None,
    options: Runtimes = None,
    seed: int | None = None,
    force: bool = False,
) -> ExportSummary:
    """Export an already loaded framework model (see ``export_model``); ``source`` is recorded as given."""
    return _export(
        frontend,
        native,
        owned=False,
        specs=specs,
        example=example,
        output=output,
        source=source,
        export_options=export_options,
        test_data=test_data,
        tolerance=tolerance,
        options=options,
        seed=seed,
        force=force,
    )


def _export(
    frontend: Frontend,
    native: Any,
    *,
    owned: bool,
    specs: Sequence[InputSpec],
    example: Mapping[str, np.ndarray],
    output: str | os.PathLike[str],
    source: str,
    export_options: ExportOptions | None,
    test_data: bool,
    tolerance: Tolerance | None,
    options: Runtimes,
    seed: int | None,
    force: bool,
) -> ExportSummary:
    """``export_native``; an ``owned`` model (``export_model`` loaded it) has its weights freed once exported.

    NOTE: why free them: onnxruntime then loads the export into the memory the framework's weights held
    (BERT-base: 3.2x its weights at the peak with both, 2.3x without; scripts/measure_memory.py).
    """
    output = Path(output)
    _check_opset((export_options or ExportOptions()).opset)
    if not force:
        _check_not_foreign(output, test_data)
    step(f"running {frontend.name} on the example inputs")
    reference = frontend.run(native, example)
    with staging_dir(output.parent) as staging:
        # NOTE: why a staging folder under the final name: an exporter may write external data beside the
        # model (``model.onnx.data``) and records that file name inside the model; exporting under the final
        # name and moving every file into place keeps the reference valid and nothing half-written visible.
        staged = staging / output.name
        step(f"capturing and converting with the {frontend.name} exporter")
        result = frontend.export(native, specs, example, staged, export_options or ExportOptions())
        if owned and isinstance(frontend, Releasable):
            frontend.release(native)
        model = load_onnx(staged, weights=False)
        specs = settle_dynamic_dims(specs, _input_dims(model))
        expected = outputs_by_name(reference, model.output_names, frontend)
        checks = [("export example", example, expected)]
        step("checking the ONNX model in onnxruntime")
        report = check_data_sets(model, frontend.name, checks, tolerance, options, None)
        report.model = str(output)
        report.notes.extend(result.notes)
        move_into(staging, output.parent, last=output.name)
    step("writing the test data and the manifest")
    test_dir = write_test_data_set(test_data_folder(output), example, expected) if test_data else None
    manifest = write_manifest(
        output,
        {
            "framework": frontend.name,
            "source": source,
            "exporter": result.exporter,
            "opset": result.opset,
            "inputs": [spec.to_dict() for spec in specs],
            "outputs": [
                {"name": name, "dtype": np.asarray(v).dtype.name, "shape": _dims(model, name)}
                for name, v in expected.items()
            ],
            "test_data": test_dir.relative_to(output.parent).as_posix() if test_dir else None,
            "test_data_sha256": folder_digest(test_dir) if test_dir else None,
            "seed": seed,
            "notes": result.notes,
            "versions": frontend.versions(),
        },
    )
    return ExportSummary(output, manifest, test_dir, frontend.name, result, list(specs), report)


# NOTE: why 7: the oldest opset onnxruntime still implements for common operators
MIN_OPSET = 7


def _check_not_foreign(output: Path, test_data: bool) -> None:
    """Refuse to replace a model, or test data, that this export did not write before (``force`` allows).

    NOTE: why: re-exporting over one's own previous export is the normal loop, but a file convkit did not
    write (another tool's model, a hand-made test case) is evidence a user may not get back.

    Raises:
        OutputPathError: the file or the data sets exist and their manifest does not claim them.
    """
    from convkit.core.manifest import test_data_folder, written_by_convkit
    from convkit.core.outputs import OutputPathError

    ours = output.is_file() and written_by_convkit(output)
    if output.exists() and not ours:
        raise OutputPathError(
            f"{output} exists and was not written by a convkit export (no manifest records it)",
            "choose another -o, or pass --force to replace it",
        )
    folder = test_data_folder(output)
    if test_data and not ours and folder.is_dir() and any(folder.glob("test_data_set_*")):
        raise OutputPathError(
            f"{folder} already holds test data sets of another model",
            "export into another folder (or under another name), or pass --force to replace them",
        )


def _check_opset(opset: int | None) -> None:
    """Refuse an opset no exporter can write before any exporter runs (some would silently write another).

    Raises:
        UnsupportedModelError: the opset is below 7 or beyond what the installed onnx defines.
    """
    if opset is None:
        return
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UnsupportedModelError(
            f"opset {opset} is outside what ONNX defines here ({MIN_OPSET} to {newest})",
            "omit --opset for the exporter's default, or give one in that range",
            stage="input",
        )


def _input_dims(model: OnnxModel) -> dict[str, list[int | str | None]]:
    """Each graph input's declared dims (see ``_dims``)."""
    inputs = model.proto.graph.input
    return {value.name: _dims(model, value.name, inputs) for value in inputs}


def _dims(model: OnnxModel, output: str, values: Any = None) -> list[int | str | None]:
    """An output's declared dims: sizes, symbolic names, ``None`` where the model leaves one unknown."""
    for value in model.proto.graph.output if values is None else values:
        if value.name == output:
            dims = value.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    return []
