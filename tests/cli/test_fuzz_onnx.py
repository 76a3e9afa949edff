"""Mutated ONNX files never make convkit crash or hang: ``inspect``, ``run`` and ``verify`` on each mutant of
the bundled test cases end in exit 0, 1 or 2, never 3 (an internal error), within a bounded time; every
refusal is one to three lines without a traceback, and the case's files are byte-identical afterwards.

The mutants are deterministic: mutant ``N`` of a case comes from ``random.Random(f"{SEED}:{case}:{N}")``, so
a failure names the mutant and ``mutant(case, N)`` rebuilds it (``write_case`` writes it as a test case).
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TESTCASES, run_convkit

SEED = 20240611
CASES = ("reference_cnn", "old_opset_mlp")
MUTANTS_PER_CASE = 400
RUN_TIMEOUT = "5"
"""``--timeout`` of ``run`` and ``verify``: an inference that would never end is stopped after this."""
COMMAND_SECONDS = 30.0
"""The wall-clock bound on one command (a hang fails the test instead of stopping it)."""

# NOTE: why these values: the edges a parser or shape function gets wrong (0, -1, the int32/int64 limits)
# and a few small ones; nothing between 1e3 and 2**31, where a mutant would ask for gigabytes that a
# shared test machine may actually hand out before onnxruntime notices.
INTERESTING_INTS = (-(2**63), -(2**31), -1, 0, 1, 2, 3, 5, 2**31 - 1, 2**62)
INTERESTING_FLOATS = (0.0, -1.0, 1e-30, 1e30, float("inf"), float("-inf"), float("nan"))
OP_TYPES = ("Relu", "Add", "Conv", "Gemm", "Loop", "If", "Reshape", "Identity", "NoSuchOp", "", "Softmax")
OPSETS = (-1, 0, 1, 6, 7, 12, 17, 21, 999, 2**62)
DATA_TYPES = (-5, 0, 1, 2, 7, 8, 9, 10, 11, 16, 17, 22, 23, 24, 77, 1000)
LOCATIONS = ("../../etc/passwd", "/etc/passwd", "missing.bin", "", "model.onnx", "sub/../../x.bin", "w\0.bin")
BYTE_COUNTS = ("0", "-1", "abc", "99999999999", "", "16")
INVALID_UTF8 = b"\xff\xfe\xc3("


def mutant(case: str, index: int) -> tuple[bytes, bytes | None, str]:
    """Mutant ``index`` of ``case``: the model's bytes, the first data set's ``input_0.pb`` bytes (``None``:
    unchanged) and a description of what was changed."""
    rng = random.Random(f"{SEED}:{case}:{index}")
    model = (TESTCASES / case / "model.onnx").read_bytes()
    if rng.random() < 0.1:
        data = (TESTCASES / case / "test_data_set_0" / "input_0.pb").read_bytes()
        mutated, what = _mutate_tensor_file(data, rng)
        return model, mutated, f"input_0.pb: {what}"
    name, mutate = rng.choice(MUTATORS)
    mutated, what = mutate(model, rng)
    return mutated, None, f"{name}: {what}"


def write_case(case: str, index: int, target: Path) -> str:
    """Write mutant ``index`` of ``case`` as a test case in ``target``; returns its description."""
    shutil.copytree(TESTCASES / case, target)
    model, data, what = mutant(case, index)
    (target / "model.onnx").write_bytes(model)
    if data is not None:
        (target / "test_data_set_0" / "input_0.pb").write_bytes(data)
    return what


# -- byte-level mutations ------------------------------------------------------------------------------


def _position(data: bytes, rng: random.Random) -> int:
    """A byte offset, half the time in the head or tail, where a model keeps its graph's structure (the
    weights' raw bytes sit in the middle)."""
    region = rng.random()
    if region < 0.35:
        return rng.randrange(min(len(data), 4096))
    if region < 0.5:
        return rng.randrange(max(0, len(data) - 1024), len(data))
    return rng.randrange(len(data))


def _flip(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    spots = sorted(_position(data, rng) for _ in range(rng.randint(1, 8)))
    for spot in spots:
        out[spot] ^= rng.randint(1, 255)
    return bytes(out), f"flipped bytes at {spots}"


def _truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = _position(data, rng)
    return data[:cut], f"truncated to {cut} bytes"


def _duplicate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    start = _position(data, rng)
    end = min(len(data), start + rng.randint(1, 64))
    at = _position(data, rng)
    return data[:at] + data[start:end] + data[at:], f"copied bytes {start}..{end} to {at}"


# -- proto-level mutations -----------------------------------------------------------------------------


def _proto(data: bytes) -> Any:
    import onnx

    proto = onnx.ModelProto()
    proto.ParseFromString(data)
    return proto


def _values(proto: Any) -> list[Any]:
    graph = proto.graph
    return [*graph.input, *graph.output, *graph.value_info]


def _dims(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    proto = _proto(data)
    value = rng.randint(-(2**31), 2**31) if rng.random() < 0.2 else rng.choice(INTERESTING_INTS)
    if rng.random() < 0.5:
        tensor = rng.choice(proto.graph.initializer)
        if tensor.dims and rng.random() < 0.8:
            axis = rng.randrange(len(tensor.dims))
            tensor.dims[axis] = value
            return proto.SerializeToString(), f"initializer {tensor.name} dim {axis} = {value}"
        tensor.dims.append(rng.choice((0, 1, 2)))
        return proto.SerializeToString(), f"initializer {tensor.name} gained a dim"
    info = rng.choice(_values(proto))
    dims = info.type.tensor_type.shape.dim
    if not dims:
        return proto.SerializeToString(), "nothing to change"
    axis = rng.randrange(len(dims))
    if rng.random() < 0.2:
        dims[axis].dim_param = rng.choice(("", "n", "x y"))
        return proto.SerializeToString(), f"value {info.name} dim {axis} symbolic"
    dims[axis].dim_value = value
    return proto.SerializeToString(), f"value {info.name} dim {axis} = {value}"


def _data_type(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    proto = _proto(data)
    data_type = rng.choice(DATA_TYPES)
    if rng.random() < 0.5:
        tensor = rng.choice(proto.graph.initializer)
        tensor.data_type = data_type
        return proto.SerializeToString(), f"initializer {tensor.name} data type {data_type}"
    info = rng.choice(_values(proto))
    info.type.tensor_type.elem_type = data_type
    return proto.SerializeToString(), f"value {info.name} data type {data_type}"


def _op_type(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    proto = _proto(data)
    node = rng.choice(proto.graph.node)
    choice = rng.random()
    if choice < 0.6:
        node.op_type = rng.choice(OP_TYPES)
        return proto.SerializeToString(), f"node {node.name} op type {node.op_type!r}"
    if choice < 0.8:
        node.domain = rng.choice(("com.microsoft", "ai.onnx.ml", "no.such.domain", "ai.onnx"))
        return proto.SerializeToString(), f"node {node.name} domain {node.domain!r}"
    if node.input and rng.random() < 0.5:
        node.input[rng.randrange(len(node.input))] = rng.choice(("", "undefined_value", node.output[0]))
        return proto.SerializeToString(), f"node {node.name} input rewired"
    del proto.graph.node[rng.randrange(len(proto.graph.node))]
    return proto.SerializeToString(), "a node deleted"


def _attribute(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    import onnx

    proto = _proto(data)
    nodes = [node for node in proto.graph.node if node.attribute] or list(proto.graph.node)
    node = rng.choice(nodes)
    if not node.attribute or rng.random() < 0.15:
        added = node.attribute.add()
        added.name = rng.choice(("axis", "kernel_shape", "bogus", ""))
        added.type = rng.choice((0, 1, 2, 3, 7, 8))
        added.i = rng.choice(INTERESTING_INTS)
        return proto.SerializeToString(), f"node {node.name} gained attribute {added.name!r} ({added.type})"
    attribute = rng.choice(node.attribute)
    choice = rng.random()
    if choice < 0.15:
        attribute.type = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14))
        return proto.SerializeToString(), f"attribute {attribute.name} type {attribute.type}"
    if choice < 0.25:
        attribute.ClearField("ints")
        attribute.ClearField("i")
        return proto.SerializeToString(), f"attribute {attribute.name} emptied"
    if attribute.type == onnx.AttributeProto.INTS and attribute.ints:
        axis = rng.randrange(len(attribute.ints))
        attribute.ints[axis] = rng.choice(INTERESTING_INTS)
        return proto.SerializeToString(), f"attribute {attribute.name}[{axis}] = {attribute.ints[axis]}"
    if attribute.type == onnx.AttributeProto.FLOAT:
        attribute.f = rng.choice(INTERESTING_FLOATS)
        return proto.SerializeToString(), f"attribute {attribute.name} = {attribute.f}"
    attribute.i = rng.choice(INTERESTING_INTS)
    return proto.SerializeToString(), f"attribute {attribute.name} = {attribute.i}"


def _opset(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    proto = _proto(data)
    choice = rng.random()
    if choice < 0.5:
        proto.opset_import[0].version = rng.choice(OPSETS)
        return proto.SerializeToString(), f"opset {proto.opset_import[0].version}"
    if choice < 0.7:
        proto.ir_version = rng.choice((-1, 0, 1, 3, 7, 10, 11, 99))
        return proto.SerializeToString(), f"IR version {proto.ir_version}"
    if choice < 0.85:
        extra = proto.opset_import.add()
        extra.domain, extra.version = rng.choice((("", 13), ("com.microsoft", 1), ("x", -3)))
        return proto.SerializeToString(), f"opset import ({extra.domain!r}, {extra.version}) added"
    del proto.opset_import[:]
    return proto.SerializeToString(), "no opset import"


def _graph(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """The graph's interface: outputs dropped, an input duplicated or retyped, a wrong value_info."""
    import onnx

    proto = _proto(data)
    graph = proto.graph
    choice = rng.random()
    if choice < 0.2:
        del graph.output[:]
        return proto.SerializeToString(), "no graph output"
    if choice < 0.4:
        graph.input.add().CopyFrom(graph.input[0])
        return proto.SerializeToString(), f"input {graph.input[0].name} twice"
    if choice < 0.6:
        value = rng.choice([*graph.input, *graph.output])
        element = onnx.TypeProto()
        element.CopyFrom(value.type)
        kind = rng.choice(("sequence_type", "optional_type"))
        value.type.Clear()
        getattr(value.type, kind).elem_type.CopyFrom(element)
        return proto.SerializeToString(), f"value {value.name} made a {kind}"
    node = rng.choice(graph.node)
    info = graph.value_info.add()
    info.name = node.output[0]
    info.type.tensor_type.elem_type = rng.choice((1, 6, 7, 9))
    info.type.tensor_type.shape.dim.add().dim_value = rng.choice((0, 1, 7))
    return proto.SerializeToString(), f"value_info for {info.name} with a wrong type or shape"


def _external(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    import onnx

    proto = _proto(data)
    tensor = rng.choice(proto.graph.initializer)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    if rng.random() < 0.7:
        tensor.ClearField("raw_data")
    entries = {"location": rng.choice(LOCATIONS)}
    for key in ("offset", "length"):
        if rng.random() < 0.5:
            entries[key] = rng.choice(BYTE_COUNTS)
    if rng.random() < 0.2:
        entries[rng.choice(("checksum", "", "basepath"))] = "x"
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString(), f"initializer {tensor.name} external {entries}"


def _invalid_utf8(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A text field set to bytes that are not UTF-8 (protobuf refuses to set them, so the serialized model
    is patched: a placeholder of the same length, replaced)."""
    proto = _proto(data)
    graph = proto.graph
    fields: list[tuple[str, Callable[[str], None]]] = [
        ("model doc_string", lambda text: setattr(proto, "doc_string", text)),
        ("producer_name", lambda text: setattr(proto, "producer_name", text)),
        ("graph name", lambda text: setattr(graph, "name", text)),
    ]
    node = rng.choice(graph.node)
    fields += [
        ("node name", lambda text: setattr(node, "name", text)),
        ("node op_type", lambda text: setattr(node, "op_type", text)),
        ("node input", lambda text: node.input.__setitem__(0, text)),
        ("node output", lambda text: node.output.__setitem__(0, text)),
        ("graph input name", lambda text: setattr(graph.input[0], "name", text)),
        ("graph output name", lambda text: setattr(graph.output[0], "name", text)),
        ("initializer name", lambda text: setattr(rng.choice(graph.initializer), "name", text)),
    ]
    if node.attribute:
        fields.append(("attribute name", lambda text: setattr(node.attribute[0], "name", text)))
    what, setter = rng.choice(fields)
    placeholder = f"@@{rng.randrange(10**8):08d}@@"
    setter(placeholder)
    patched = proto.SerializeToString().replace(
        placeholder.encode(), INVALID_UTF8 + placeholder.encode()[len(INVALID_UTF8) :]
    )
    return patched, f"{what} not UTF-8"


def _mutate_tensor_file(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A mutation of a serialized TensorProto: its bytes, dims, data type or external data."""
    import onnx

    choice = rng.random()
    if choice < 0.4:
        return rng.choice((_flip, _truncate, _duplicate))(data, rng)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(data)
    if choice < 0.6:
        tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice(INTERESTING_INTS)
        return tensor.SerializeToString(), f"dims {list(tensor.dims)}"
    if choice < 0.75:
        tensor.data_type = rng.choice(DATA_TYPES)
        return tensor.SerializeToString(), f"data type {tensor.data_type}"
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", rng.choice(LOCATIONS)
    return tensor.SerializeToString(), f"external data at {entry.value!r}"


MUTATORS: list[tuple[str, Callable[[bytes, random.Random], tuple[bytes, str]]]] = [
    ("flip", _flip),
    ("truncate", _truncate),
    ("duplicate", _duplicate),
    ("dims", _dims),
    ("data type", _data_type),
    ("op type", _op_type),
    ("attribute", _attribute),
    ("opset", _opset),
    ("graph", _graph),
    ("external data", _external),
    ("invalid UTF-8", _invalid_utf8),
]


# -- the test ------------------------------------------------------------------------------------------


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _problem(args: list[str], done: subprocess.CompletedProcess[str]) -> str | None:
    """What is wrong with how a command on a mutant ended, or ``None``."""
    if done.returncode == 3 or done.returncode not in (0, 1, 2):
        return f"exit {done.returncode}: {done.stderr.strip()[-400:]}"
    if "Traceback" in done.stderr:
        return f"a traceback: {done.stderr[-400:]}"
    if done.returncode == 2:
        lines = done.stderr.strip().splitlines()
        if not 1 <= len(lines) <= 3 or not lines[0].startswith("error: "):
            return f"{len(lines)} line(s) on stderr: {done.stderr.strip()[-400:]}"
    return None


@pytest.mark.parametrize("case", CASES)
def test_mutated_models_never_crash_or_hang(tmp_path, case):
    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    for index in range(MUTANTS_PER_CASE):
        folder = tmp_path / f"{case}-{index}"
        what = write_case(case, index, folder / "case")
        out = folder / "out"
        out.mkdir()
        before = _digest(folder / "case")
        commands = [
            ["inspect", "case"],
            ["run", "case/model.onnx", "--data", "case/test_data_set_0", "-o", "out/o.npz",
             "--timeout", RUN_TIMEOUT],
            ["verify", "case", "--timeout", RUN_TIMEOUT],
        ]  # fmt: skip
        for args in commands:
            try:
                done = run_convkit(*args, cwd=folder, timeout=COMMAND_SECONDS)
            except subprocess.TimeoutExpired:
                failures.append(f"{case}#{index} ({what}) {args[0]}: no end within {COMMAND_SECONDS:g} s")
                continue
            outcomes[f"{args[0]} {done.returncode}"] += 1
            problem = _problem(args, done)
            if problem is not None:
                failures.append(f"{case}#{index} ({what}) {args[0]}: {problem}")
            if args[0] == "run" and done.returncode != 0 and any(out.iterdir()):
                failures.append(f"{case}#{index} ({what}) run failed but left {sorted(out.iterdir())}")
            if _digest(folder / "case") != before:
                failures.append(f"{case}#{index} ({what}) {args[0]} changed or added files in the case")
                before = _digest(folder / "case")
        shutil.rmtree(folder)
    elapsed = time.monotonic() - started
    print(
        f"{case}: {MUTANTS_PER_CASE} mutants in {elapsed:.1f} s; command and exit: {sorted(outcomes.items())}"
    )
    assert not failures, f"{len(failures)} problem(s) in {elapsed:.0f} s:\n" + "\n".join(failures)
