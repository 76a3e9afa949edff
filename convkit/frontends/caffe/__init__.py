"""The Caffe front end: a deploy ``.prototxt`` with its ``.caffemodel``, exported with caffe2onnx and run by
OpenCV's Caffe importer, all of it in the Caffe environment (``convkit env create caffe``), driven as a
worker.

NOTE: why a worker and not an import: Caffe itself has no installable package; caffe2onnx pins onnx==1.6.0
(installed with ``--no-deps`` in an environment of its own) and OpenCV brings native code the core does not
need. The core keeps a handle (a ``WorkerModel``), and each job (describe, run, export, build the reference
CNN) is one request to ``convkit/frontends/caffe/env/worker.py``. Nothing Caffe-related is imported here.

NOTE: why OpenCV is "the framework": with Caffe unavailable, the reference outputs come from
``cv2.dnn.readNetFromCaffe``, which parses the user's files with its own Caffe parser and implements Caffe's
layers (ceil-mode pooling included) in code that shares nothing with caffe2onnx.

Sources: ``net.prototxt`` (its weights from ``--weights net.caffemodel`` or the ``.caffemodel`` beside it with
the same stem), that ``.caffemodel`` itself, a folder holding one ``.prototxt`` and one ``.caffemodel``, or
``path/to/file.py:factory`` with ``--framework caffe`` (the factory returns ``(prototxt text, {layer:
[blobs]})``, or the text with ``--weights``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from convkit.errors import InputFileError
from convkit.frontends._worker.frontend import EnvWorkerFrontend, WorkerModel
from convkit.frontends.base import LoadOptions

PROTOTXT = ".prototxt"
CAFFEMODEL = ".caffemodel"
_HINT = (
    "give the deploy net.prototxt with --weights net.caffemodel (or the caffemodel beside it, same stem), "
    "or a folder holding one of each"
)


def caffe_files(path: Path, weights: Path | None = None) -> tuple[Path, Path | None] | None:
    """The prototxt and caffemodel at ``path`` (a prototxt, a caffemodel, or a folder with one of each),
    ``weights`` taking the caffemodel's place; ``None`` when ``path`` is none of these. The caffemodel is
    ``None`` when a prototxt has none beside it."""
    if path.is_dir():
        prototxts, models = sorted(path.glob(f"*{PROTOTXT}")), sorted(path.glob(f"*{CAFFEMODEL}"))
        if len(prototxts) != 1 or (len(models) != 1 and weights is None):
            return None
        return prototxts[0], weights or models[0]
    if path.suffix == PROTOTXT:
        beside = path.with_suffix(CAFFEMODEL)
        return path, weights or (beside if beside.is_file() else None)
    if path.suffix == CAFFEMODEL:
        prototxt = path.with_suffix(PROTOTXT)
        return (prototxt, weights or path) if prototxt.is_file() else None
    return None


class CaffeFrontend(EnvWorkerFrontend):
    """Caffe through its own environment: prototxt + caffemodel files and factories (``--framework caffe``),
    exported with caffe2onnx, run by OpenCV's Caffe importer for the reference outputs."""

    name = "caffe"
    exporter = "caffe2onnx"
    version_dists: ClassVar[dict[str, str]] = {
        "caffe2onnx": "caffe2onnx",
        "opencv": "opencv-python-headless",
        "onnx (caffe env)": "onnx",
    }
    # NOTE: why: caffe2onnx casts -FLT_MAX to float32 (a numpy overflow warning on every pooling layer).
    quiet_env: ClassVar[dict[str, str]] = {"PYTHONWARNINGS": "ignore", "OPENCV_LOG_LEVEL": "ERROR"}
    # NOTE: why NCHW: Caffe's blobs are NCHW and its Convolution / InnerProduct blobs have PyTorch's layout;
    # the canonical weights go in unchanged.
    reference_layout = "NCHW"

    def claims_path(self, path: Path) -> bool:
        """A ``.prototxt`` or ``.caffemodel`` (with its prototxt beside it), or a folder with one of each."""
        return caffe_files(path) is not None

    def load(self, source: str, options: LoadOptions, preloaded: Any = None) -> WorkerModel:
        """A handle on ``source``, checked here without starting the worker: the prototxt and its caffemodel
        (``--weights`` or the one beside it) must exist. The worker parses and checks them at each request.

        Raises:
            InputFileError: a file is missing, or the path is no Caffe net.
        """
        from convkit.core.sources import is_factory_source

        if is_factory_source(source):
            return self.factory_model(source, options)
        path = Path(source)
        weights = Path(options.weights) if options.weights else None
        if weights is not None and (weights.suffix != CAFFEMODEL or not weights.is_file()):
            raise InputFileError(
                f"weights file {options.weights} "
                + ("does not exist" if not weights.exists() else "is not a .caffemodel"),
                "give the .caffemodel trained with the prototxt: --weights net.caffemodel",
            )
        if not path.exists():
            raise InputFileError(f"model {source} does not exist", _HINT)
        files = caffe_files(path, weights)
        if files is None:
            raise InputFileError(f"{source} is not a Caffe net", _HINT)
        prototxt, caffemodel = files
        if caffemodel is None:
            raise InputFileError(
                f"{prototxt.name} has no weights: no {prototxt.with_suffix(CAFFEMODEL).name} beside it",
                "give its weights with --weights net.caffemodel",
            )
        spec = {
            "kind": "files",
            "prototxt": str(prototxt.absolute()),
            "caffemodel": str(caffemodel.absolute()),
        }
        return WorkerModel(source, options, spec)
