"""Files convkit reads but does not trust: a ``.pt2`` archive that carries code (a pickle, a compiled library,
Python hidden in its program's strings) is refused before any of it runs, unless --unsafe-allow-pickle;
archives ``torch.export.save`` writes for plain modules load as before.

A ``.pt``/``.pth`` checkpoint holding a pickle payload, as the model file and as ``--weights``, is covered by
``test_torch_frontend.py::test_refusing_a_pickle_runs_none_of_its_code``.
"""

from __future__ import annotations

import io
import json
import operator
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_convkit

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from torch import nn  # noqa: E402

from convkit.errors import UnsafeModelError  # noqa: E402
from convkit.frontends import LoadOptions  # noqa: E402
from convkit.frontends.torch import TorchFrontend  # noqa: E402
from convkit.frontends.torch.pt2_check import refusal  # noqa: E402

pytestmark = pytest.mark.torch

Members = list[tuple[str, bytes]]


class _Touch:
    """Unpickling this touches a marker file (and gives ``None``): stands in for code hidden in a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _Payload:
    """Unpickles to ``value`` after touching the marker, so that a file carrying it still loads when trusted.
    Only standard-library names go into the pickle: nothing of this test module is needed to load it."""

    def __init__(self, marker: Path, value: Any) -> None:
        self.marker, self.value = marker, value

    def __reduce__(self):
        return (operator.getitem, ((_Touch(self.marker), self.value), 1))


def _pickled(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()


def _small_program(path: Path) -> Path:
    """A plain module saved by ``torch.export.save``, its batch dynamic."""
    model = _small_model()
    batch = torch.export.Dim("batch", max=64)
    program = torch.export.export(model, (torch.randn(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def _rewritten(clean: Path, path: Path, change: Callable[[str, Members], Members]) -> Path:
    """A copy of the archive ``clean`` with ``change(root folder, members)`` applied to its members."""
    with zipfile.ZipFile(clean) as archive:
        members = [(name, archive.read(name)) for name in archive.namelist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in change(members[0][0].split("/")[0] + "/", members):
            archive.writestr(name, data)
    return path


def _with_member(suffix: str, edit: Callable[[bytes], bytes]) -> Callable[[str, Members], Members]:
    return lambda _root, members: [(n, edit(d) if n.endswith(suffix) else d) for n, d in members]


def _with_json(suffix: str, edit: Callable[[dict], None]) -> Callable[[str, Members], Members]:
    def change(data: bytes) -> bytes:
        document = json.loads(data)
        edit(document)
        return json.dumps(document).encode()

    return _with_member(suffix, change)


def _pickled_weight(marker: Path) -> Callable[[str, Members], Members]:
    """The first weight stored pickled (``use_pickle: true``), as torch.export.save does for tensor
    subclasses, its pickle carrying the payload."""

    def change(root: str, members: Members) -> Members:
        config = json.loads(next(d for n, d in members if n.endswith("_weights_config.json")))
        fqn, meta = next(iter(config["config"].items()))
        meta["use_pickle"] = True
        weight = nn.Parameter(_small_model().state_dict()[fqn].clone())
        replaced = {
            f"{root}data/weights/{meta['path_name']}": _pickled(_Payload(marker, weight)),
            f"{root}data/weights/model_weights_config.json": json.dumps(config).encode(),
        }
        return [(n, replaced.get(n, d)) for n, d in members]

    return change


def _pickled_sample_inputs(marker: Path) -> Callable[[str, Members], Members]:
    """The sample inputs a pickle ``weights_only`` refuses, so that torch unpickles them in full."""
    inputs = ((torch.randn(2, 4),), {})
    return _with_member("data/sample_inputs/model.pt", lambda _: _pickled(_Payload(marker, inputs)))


def _files(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


# -------------------------------------------------------------------------------- what must still load
class _Constants(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("offset", torch.ones(4), persistent=False)

    def forward(self, x):
        return self.linear(x) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + self.offset


class _Keywords(nn.Module):
    def forward(self, x, *, scale, extra):
        return x * scale + extra["a"]


class _Branch(nn.Module):
    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda x: x.sin(), lambda x: x.cos(), (x,))


class _NoGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        with torch.no_grad():
            y = self.linear(x)
        return y + 1


class _Related(nn.Module):
    """Two dynamic dimensions in a relation: the program carries guards_code."""

    def forward(self, x, y):
        return x[: y.shape[0]] + y


def test_archives_torch_export_save_writes_load_without_the_flag(tmp_path):
    dim = torch.export.Dim
    x = torch.randn(2, 4)
    cases = {
        "constants": (_Constants(), (x,), {}, None),
        "keywords": (_Keywords(), (x,), {"scale": x, "extra": {"a": x}}, None),
        "branch": (_Branch(), (x,), {}, None),
        "no_grad": (_NoGrad(), (x,), {}, None),
        "related": (_Related(), (torch.randn(6, 4), x), {}, ({0: dim("a", max=99)}, {0: dim("b", max=50)})),
    }
    frontend = TorchFrontend()
    for name, (model, args, kwargs, dynamic) in cases.items():
        path = tmp_path / f"{name}.pt2"
        torch.export.save(torch.export.export(model.eval(), args, kwargs, dynamic_shapes=dynamic), str(path))
        assert refusal(path.read_bytes()) is None, name
        assert isinstance(frontend.load(str(path), LoadOptions()), torch.export.ExportedProgram)
    with zipfile.ZipFile(tmp_path / "related.pt2") as archive:
        related = json.loads(archive.read("related/models/model.json"))
    assert related["guards_code"], "the case meant to carry guards carries none"
    # the same archive written again by Python's zipfile (stored, unaligned) is still the same archive
    copy = _rewritten(tmp_path / "constants.pt2", tmp_path / "copy.pt2", lambda _root, members: members)
    assert refusal(copy.read_bytes()) is None


# ---------------------------------------------------------------------------- pickles, from the command line
@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A clean ``.pt2`` and the ONNX model convkit exports from it."""
    folder = tmp_path_factory.mktemp("clean")
    clean = _small_program(folder / "clean.pt2")
    model = folder / "model" / "model.onnx"
    result = run_convkit("export", str(clean), "-o", str(model), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return clean, model


def _refused_in_one_line(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could run code the file carries" in errors[0], result.stderr
    assert sum("--unsafe-allow-pickle" in line for line in result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "carrier", [_pickled_weight, _pickled_sample_inputs], ids=["weights", "sample_inputs"]
)
def test_a_pt2_carrying_a_pickle_is_refused_before_it_runs(tmp_path, exported, carrier):
    clean, model = exported
    marker = tmp_path / "pwned"
    evil = _rewritten(clean, tmp_path / "evil.pt2", carrier(marker))
    out = tmp_path / "out" / "model.onnx"
    before = _files(tmp_path)

    _refused_in_one_line(run_convkit("export", str(evil), "-o", str(out), timeout=300))
    _refused_in_one_line(run_convkit("verify", str(model), "--source", str(evil), timeout=300))
    bench = run_convkit("bench", str(model), "--source", str(evil), "--batch-sizes", "1", "--seconds", "0.1")
    assert bench.returncode == 2 and "could run code the file carries" in bench.stderr, bench.stderr
    assert not marker.exists()
    assert _files(tmp_path) == before

    # trusted: loading runs the payload (it is real) and the export goes on as before
    allowed = run_convkit("export", str(evil), "-o", str(out), "--unsafe-allow-pickle", timeout=300)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert marker.exists() and out.is_file()
    marker.unlink()
    verified = run_convkit(
        "verify", str(model), "--source", str(evil), "--unsafe-allow-pickle", timeout=300
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert marker.exists()


# --------------------------------------------------------------------- code that is not a pickle
def _sympy_payload(marker: Path) -> Callable[[str, Members], Members]:
    """Symbolic sizes whose text ``sympy.sympify`` evaluates, as Python, before the size it still gives."""
    code = f"__import__('pathlib').Path({str(marker)!r}).touch() or "

    def edit(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                value[key] = code + item if key == "expr_str" else item
                edit(item)
        elif isinstance(value, list):
            for item in value:
                edit(item)

    return _with_json("models/model.json", edit)


def _guard_payload(marker: Path) -> Callable[[str, Members], Members]:
    """A guard: Python that ``ExportedProgram.module()`` compiles into the module it returns."""
    code = f"__import__('pathlib').Path({str(marker)!r}).touch() is None"
    return _with_json("models/model.json", lambda program: program.update(guards_code=[code]))


def _target_payload(marker: Path) -> Callable[[str, Members], Members]:
    def edit(program: dict) -> None:
        node = program["graph_module"]["graph"]["nodes"][0]
        node["target"] = "torch.os.system"
        node["inputs"] = [{"name": "", "arg": {"as_string": f"touch {marker}"}, "kind": 1}]

    return _with_json("models/model.json", edit)


def _name_payload(marker: Path) -> Callable[[str, Members], Members]:
    """An input name, which torch pastes into the ``def forward(...)`` it generates."""
    name = f"x=__import__('pathlib').Path({str(marker)!r}).touch()"

    def edit(program: dict) -> None:
        program["graph_module"]["module_call_graph"][0]["signature"]["forward_arg_names"] = [name]

    return _with_json("models/model.json", edit)


def _opaque_constant(marker: Path) -> Callable[[str, Members], Members]:
    """A constant named ``opaque_obj_0``, which torch reads with ``pickle.loads``."""

    def change(root: str, members: Members) -> Members:
        config = {"config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}}}
        edited = [
            (n, json.dumps(config).encode() if n.endswith("_constants_config.json") else d)
            for n, d in members
        ]
        return [*edited, (f"{root}data/constants/opaque_obj_0", _pickled(_Touch(marker)))]

    return change


def _compiled_library(_marker: Path) -> Callable[[str, Members], Members]:
    return lambda root, members: [*members, (f"{root}data/aotinductor/model/model.so", b"\x7fELF")]


def _case_twin(_marker: Path) -> Callable[[str, Members], Members]:
    """A second config whose name differs only in case: torch's reader finds members ignoring case."""
    return lambda root, members: [*members, (f"{root}DATA/WEIGHTS/MODEL_WEIGHTS_CONFIG.JSON", b"{}")]


@pytest.mark.parametrize(
    ("carrier", "named", "real"),
    [
        (_sympy_payload, "symbolic size", True),
        (_guard_payload, "guard", True),
        (_target_payload, "torch.os.system", False),
        (_name_payload, "paste into Python source", False),
        (_opaque_constant, "pickled object", False),
        (_compiled_library, "AOTInductor", False),
        (_case_twin, "differ only in case", False),
    ],
    ids=["sympify", "guards", "target", "name", "opaque_constant", "aotinductor", "case_twin"],
)
def test_code_hidden_in_a_pt2_is_refused(tmp_path, carrier, named, real):
    frontend = TorchFrontend()
    marker = tmp_path / "pwned"
    evil = _rewritten(_small_program(tmp_path / "clean.pt2"), tmp_path / "evil.pt2", carrier(marker))
    with pytest.raises(UnsafeModelError, match="could run code the file carries") as info:
        frontend.load(str(evil), LoadOptions())
    assert named in info.value.message and "--unsafe-allow-pickle" in (info.value.hint or "")
    assert not marker.exists()
    if real:
        # the same file, trusted: torch runs what it carries (on load, or when the module is built)
        loaded = frontend.load(str(evil), LoadOptions(unsafe_pickle=True))
        (name,) = frontend.input_names(loaded)
        frontend.run(loaded, {name: np.ones((2, 4), np.float32)})
        assert marker.exists()
