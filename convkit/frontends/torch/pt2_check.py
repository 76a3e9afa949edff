"""What in a ``.pt2`` archive could run code, found before ``torch.export.load`` reads it.

NOTE: why inspect at all: ``torch.export.load`` is no safe loader. For an archive in the layout
``torch.export.save`` writes (torch 2.13: ``torch/export/pt2_archive/_package.py``,
``torch/_export/serde/serialize.py``, ``torch/export/_unlift.py``) it
- unpickles with ``weights_only=False`` the weights and tensor constants its payload configs mark
  ``use_pickle``, the constants named ``opaque_obj_*`` (``pickle.loads``) and ``custom_obj_*`` (TorchScript's
  unpickler), the legacy ``data/weights/<model>.pt`` / ``data/constants/<model>.pt``, and the sample inputs
  whenever ``weights_only=True`` refuses them; an archive without the layout goes to the torch 2.7 reader,
  which unpickles ``serialized_*.pt`` the same way;
- loads the shared libraries under ``data/aotinductor/``;
- resolves each node's target to whatever ``torch.``, ``operator.`` or ``math.`` names (``torch.os.system``,
  ``torch.ops.load_library``, ``torch.ops.aten.save``) and calls it when the program runs;
- parses symbolic shapes with ``sympy.sympify``, which ``eval``s its string;
- writes names, tree-spec keys, sample-input keys and ``guards_code`` into the Python source that
  ``GraphModule`` and ``ExportedProgram.module()`` ``exec``.
So this module allows what ``torch.export.save`` writes for a plain module and refuses everything else:
member names against the layout, payload configs, sample inputs through the weights-only unpickler, and every
string of the program by where it ends up. It reads the members with torch's own archive reader, from the
bytes the caller then hands to ``torch.export.load``: what is checked is what gets loaded.
"""

from __future__ import annotations

import ast
import io
import json
import re
from typing import Any

from convkit.frontends.torch._common import first_line

# NOTE: why this alphabet: a string made of it cannot leave a quoted literal, an identifier or a comment in
# generated Python, nor add a call; every name, key and version torch.export.save writes fits it.
_PLAIN = re.compile(r"[A-Za-z0-9_.+\-]*")
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)
_NAME = r"[A-Za-z0-9_.\-]+"
_MEMBERS = re.compile(
    rf"archive_format|archive_version|byteorder|version|\.data/[A-Za-z0-9_]+|extra/.+"
    rf"|models/(?P<model>{_NAME})\.json|data/sample_inputs/{_NAME}\.pt"
    rf"|data/weights/(weight_\d+|{_NAME}_weights_config\.json)"
    rf"|data/constants/(tensor_\d+|{_NAME}_constants_config\.json)"
)
_PAYLOAD_FILES = {"weights": re.compile(r"weight_\d+"), "constants": re.compile(r"tensor_\d+")}

# the functions torch's deserializer and srepr name in symbolic shapes (sympy's and torch.utils._sympy's)
_SYMPY_CALLS = frozenset([
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "floor",
    "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan",
    "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "Xor", "Piecewise", "ExprCondPair", "ITE",
    "Tuple", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity",
])  # fmt: skip
# what torch's guard printer (torch.utils._sympy.printers.PythonPrinter) writes around input sizes
_GUARD_CALLS = frozenset(
    {
        "abs",
        "max",
        "min",
        "round",
        "int",
        "float",
        "IsNonOverlappingAndDenseIndicator",
        "cast_symbool_to_symint_guardless",
    }
)
_GUARD_TORCH = frozenset({"sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite", "_sym_sqrt"})
_TENSOR_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
# NOTE: why namespaces and HOPs by name: an OpOverload or higher-order op is torch's own kernel, but a few
# touch files (aten::save writes one, aten::from_file reads one) or compile and run code given as data
# (inline_asm_elementwise, inductor_compiled_code, aoti_call_delegate); an exported plain module needs none.
_OP_NAMESPACES = frozenset({"aten", "prims", "quantized_decomposed", "torchvision"})
_OPS_WITH_SIDE_EFFECTS = frozenset({"aten::save", "aten::from_file", "aten::_print"})
_HIGHER_ORDER_OPS = frozenset([
    "cond", "while_loop", "while_loop_stack_output", "map_impl", "scan", "associative_scan",
    "wrap_with_set_grad_enabled", "wrap_with_autocast", "auto_functionalized", "auto_functionalized_v2",
    "with_effects", "flex_attention", "invoke_subgraph", "out_dtype", "hints_wrapper",
])  # fmt: skip


class UnreadableArchive(Exception):
    """The bytes are no ``.pt2`` archive torch can read: corrupt, truncated or another format."""


class _Refused(Exception):
    """Something that could run code; the message says what and where."""


def refusal(data: bytes) -> str | None:
    """Why loading ``data``, a ``.pt2`` file's bytes, could run code the file carries.

    Args:
        data: the whole file, as it will be given to ``torch.export.load``.

    Returns:
        ``None`` when the archive holds only what ``torch.export.save`` writes for a plain module (raw
        tensors, the program's JSON, sample inputs the weights-only unpickler reads); else what was found,
        as the end of a sentence that starts with the file's name ("holds ...").

    Raises:
        UnreadableArchive: ``data`` is no ``.pt2`` archive (so ``torch.export.load`` would fail too).
    """
    try:
        _check_archive(data)
    except _Refused as refused:
        return str(refused)
    return None


def _check_archive(data: bytes) -> None:
    import zipfile

    from torch.export.pt2_archive._package import PT2ArchiveReader

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            listed = archive.namelist()
        reader = PT2ArchiveReader(io.BytesIO(data))
        records = list(reader.get_file_names())
    except Exception as exc:
        raise UnreadableArchive(first_line(exc) or "not a .pt2 archive") from exc
    root = listed[0].split("/")[0] + "/" if listed else ""
    # NOTE: why these three: torch's reader finds members by name ignoring case and only under the first
    # member's folder, and its fallback for old archives reads a top-level "version" with Python's zipfile;
    # one member per name, all under one folder, and one list for both readers leave nothing to tell apart.
    if any(not name.startswith(root) for name in listed):
        raise _Refused(f"holds a member outside its top folder {root!r}")
    if len({name.lower() for name in listed}) != len(listed):
        raise _Refused("holds two members whose names differ only in case")
    if sorted(name[len(root) :] for name in listed) != sorted(records):
        raise _Refused("lists different members to different zip readers")
    for name in records:
        _check_member_name(name)
    for name in records:
        if name.startswith("models/"):
            _check_program(_json(reader, name), name)
        elif name.endswith("_weights_config.json"):
            _check_payloads(_json(reader, name), "weights", name)
        elif name.endswith("_constants_config.json"):
            _check_payloads(_json(reader, name), "constants", name)
        elif name.startswith("data/sample_inputs/"):
            _check_sample_inputs(bytes(reader.read_bytes(name)), name)


def _check_member_name(name: str) -> None:
    if _MEMBERS.fullmatch(name):
        return
    if name.startswith("data/aotinductor/"):
        raise _Refused(f"holds AOTInductor-compiled code ({name}), a shared library that loading would run")
    if name.startswith("data/constants/") and ("custom_obj_" in name or "opaque_obj_" in name):
        raise _Refused(f"holds a pickled object ({name})")
    if name.endswith(".pt") or name.endswith(".pkl"):
        raise _Refused(f"holds a pickle ({name})")
    raise _Refused(f"holds {name}, which torch.export.save does not write for a plain module")


def _json(reader: Any, name: str) -> Any:
    try:
        return json.loads(bytes(reader.read_bytes(name)).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise UnreadableArchive(f"{name} is not valid JSON: {first_line(exc)}") from exc


def _check_payloads(config: Any, kind: str, where: str) -> None:
    """Each weight or constant must be raw bytes: ``use_pickle`` exactly ``false``, a ``weight_N`` /
    ``tensor_N`` file (``custom_obj_*`` and ``opaque_obj_*`` are pickles whatever the flag says)."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise UnreadableArchive(f"{where} has no payload config")
    for fqn, meta in entries.items():
        _plain(fqn, where)
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _Refused(f"holds pickled {kind} ({fqn!r} in {where} says use_pickle)")
        file = meta.get("path_name")
        if not isinstance(file, str) or not _PAYLOAD_FILES[kind].fullmatch(file):
            raise _Refused(f"holds {kind} stored as {file!r} ({where}), not as raw tensor bytes")


def _check_sample_inputs(raw: bytes, where: str) -> None:
    """The sample inputs must load with ``weights_only=True``, as torch tries first: it falls back to the
    full unpickler when that fails. Their dict keys become input paths in generated guard code."""
    import torch

    if not raw:
        return
    try:
        # NOTE: why torch's very call (no map_location): when it fails, torch goes on to the full unpickler
        inputs = torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as exc:
        named = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"it names {named.group(1)}" if named else first_line(exc)
        raise _Refused(f"holds a pickle the weights-only unpickler refuses ({where}: {what})") from exc
    pending = [inputs]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            for key in value:
                if type(key) is not int:
                    _plain(key, where)
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)


# ================================================================================================ the program
def _check_program(program: Any, where: str) -> None:
    if not isinstance(program, dict):
        raise UnreadableArchive(f"{where} is not an exported program")
    try:
        _walk(program, where, in_node_inputs=False)
    except RecursionError as exc:
        raise _Refused(f"nests its program too deep to check ({where})") from exc


def _walk(value: Any, where: str, in_node_inputs: bool) -> None:
    """Every string of the program's JSON, checked by where torch puts it.

    NOTE: why by key: node ``metadata`` only ever becomes ``node.meta`` (free text); ``as_string`` arguments
    of a node are written into generated code with ``repr``; ``expr_str`` goes to ``sympy.sympify``;
    ``guards_code`` is Python source; targets are resolved to callables; tree specs are JSON in a string.
    Everything else (names, keys, devices, versions) must be plain, since some of it is pasted into source.
    """
    if isinstance(value, dict):
        is_node = "target" in value and "inputs" in value
        is_graph = "nodes" in value
        for key, item in value.items():
            _plain(key, where)
            if key == "metadata":
                continue
            if key == "expr_str":
                _check_sympy(item, where)
            elif key == "guards_code":
                _check_guards(item, where)
            elif key in ("in_spec", "out_spec"):
                _check_tree_spec(item, where)
            elif key in ("target", "as_operator"):
                _check_target(item, where)
            elif key in ("as_string", "as_strings") and in_node_inputs:
                if not all(isinstance(s, str) for s in (item if isinstance(item, list) else [item])):
                    raise UnreadableArchive(f"{where}: {key} holds a non-string")
            else:
                inside = (in_node_inputs or (is_node and key == "inputs")) and not is_graph
                _walk(item, where, inside)
    elif isinstance(value, list):
        for item in value:
            _walk(item, where, in_node_inputs)
    elif isinstance(value, str):
        _plain(value, where)


def _plain(text: Any, where: str) -> None:
    if not isinstance(text, str) or not _PLAIN.fullmatch(text):
        shown = text[:60] + "..." if isinstance(text, str) and len(text) > 60 else text
        raise _Refused(f"holds the string {shown!r} ({where}), which torch would paste into Python source")


def _check_tree_spec(text: Any, where: str) -> None:
    """A pytree spec: JSON in a string, whose ``context`` is JSON again (a dict's keys)."""

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                _plain(key, where)
                if key == "context" and isinstance(item, str) and not _PLAIN.fullmatch(item):
                    visit(_decoded(item))
                else:
                    visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)
        elif isinstance(value, str):
            _plain(value, where)

    def _decoded(item: str) -> Any:
        try:
            return json.loads(item)
        except ValueError as exc:
            raise UnreadableArchive(f"{where}: a tree spec is not valid JSON") from exc

    if not isinstance(text, str):
        raise UnreadableArchive(f"{where}: a tree spec is not a string")
    visit(_decoded(text))


def _check_target(target: Any, where: str) -> None:
    """A node's target must resolve, as torch's ``deserialize_operator`` resolves it, to an operator of an
    allowed namespace, an allowed higher-order op, or one of the pure functions of symbolic shapes."""
    import math
    import operator

    import torch

    if not isinstance(target, str):
        raise UnreadableArchive(f"{where}: a node's target is not a string")
    head, _, rest = target.partition(".")
    roots = {"_operator": operator, "torch": torch, "math": math}
    found: Any = roots.get(head)
    names = rest.split(".") if rest else []
    if found is None or not names or any(not n or n.startswith("__") for n in names):
        raise _Refused(f"calls {target!r} ({where}), not an operator")
    for name in names:
        try:
            found = getattr(found, name)
        except Exception:
            raise _Refused(f"calls {target!r} ({where}), which this torch does not have") from None
    if isinstance(found, torch._ops.OpOverload):
        schema = found.name().split(".")[0]
        if found.namespace in _OP_NAMESPACES and schema not in _OPS_WITH_SIDE_EFFECTS:
            return
    elif isinstance(found, torch._ops.HigherOrderOperator):
        if found.name() in _HIGHER_ORDER_OPS:
            return
    elif any(found is allowed for allowed in _pure_functions()):
        return
    raise _Refused(f"calls {target!r} ({where}), which could reach outside the model")


def _pure_functions() -> list[Any]:
    """What torch's serializer writes as a plain Python target: arithmetic on sizes (``_SYM_OPS``)."""
    import math
    import operator

    import torch

    names = ["add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "eq", "ne", "lt", "le"]
    names += ["gt", "ge", "and_", "or_", "xor", "not_", "invert", "abs", "getitem"]
    sym = [getattr(torch, n) for n in dir(torch) if n.startswith("sym_") and callable(getattr(torch, n))]
    return [getattr(operator, n) for n in names] + [math.trunc, math.floor, math.ceil] + sym


# ================================================================================== code hidden in strings
def _check_sympy(text: Any, where: str) -> None:
    """``expr_str`` goes to ``sympy.sympify`` (``eval``): only sympy's repr of a size expression is allowed,
    i.e. calls of the functions above on numbers, ``Symbol('s0', integer=True)`` and ``Float('1.5')``."""

    def ok(node: ast.AST) -> bool:
        if isinstance(node, ast.Call):
            func = node.func
            if not isinstance(func, ast.Name) or func.id not in _SYMPY_CALLS:
                return False
            if not all(k.arg and _IDENTIFIER.fullmatch(k.arg) and _number(k.value) for k in node.keywords):
                return False
            args = list(node.args)
            first = args[0] if args else None
            if (
                isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and func.id in ("Symbol", "Float")
            ):
                if not (_IDENTIFIER if func.id == "Symbol" else _NUMBER).fullmatch(first.value):
                    return False
                args = args[1:]
            return all(ok(a) for a in args)
        return _arithmetic(node, ok)

    _parsed_and_checked(text, ok, "a symbolic size", where)


def _check_guards(guards: Any, where: str) -> None:
    """``guards_code``: Python conditions on input sizes that ``ExportedProgram.module()`` ``exec``s."""

    def source(node: ast.AST) -> bool:
        """``L['x'].size()[0]``-like: an input, its keys and attributes, its size/stride methods."""
        if isinstance(node, ast.Name):
            return node.id == "L"
        if isinstance(node, ast.Subscript):
            key = node.slice
            plain = isinstance(key, ast.Constant) and (
                type(key.value) is int or (isinstance(key.value, str) and bool(_PLAIN.fullmatch(key.value)))
            )
            return plain and source(node.value)
        if isinstance(node, ast.Attribute):
            return not node.attr.startswith("_") and source(node.value)
        if isinstance(node, ast.Call):
            func = node.func
            return (
                isinstance(func, ast.Attribute)
                and func.attr in _TENSOR_METHODS
                and source(func.value)
                and not node.keywords
                and all(ok(a) for a in node.args)
            )
        return False

    def ok(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module, attr = node.value.id, node.attr
            return (module == "math" and not attr.startswith("_")) or (
                module == "torch" and attr in _GUARD_TORCH
            )
        if isinstance(node, ast.Call) and not source(node):
            func = node.func
            # NOTE: why not methods of an input: those take callables (register_hook, apply_)
            callable_ok = (isinstance(func, ast.Name) and func.id in _GUARD_CALLS) or (
                isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and ok(func)
            )
            return callable_ok and not node.keywords and all(ok(a) for a in node.args)
        if isinstance(node, ast.Subscript | ast.Attribute | ast.Call):
            return source(node)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return bool(_PLAIN.fullmatch(node.value))
        return _arithmetic(node, ok)

    if not isinstance(guards, list):
        raise UnreadableArchive(f"{where}: guards_code is not a list")
    for guard in guards:
        _parsed_and_checked(guard, ok, "a guard", where)


def _arithmetic(node: ast.AST, ok: Any) -> bool:
    """Numbers, bare names, and arithmetic, comparisons, ``and``/``or``/``not``, ``a if c else b`` of what
    ``ok`` allows: nothing that calls, imports or reads an attribute."""
    if isinstance(node, ast.Constant):
        return node.value is None or type(node.value) in (int, float, bool)
    if isinstance(node, ast.Name):
        return not node.id.startswith("_")
    if isinstance(node, ast.UnaryOp):
        return ok(node.operand)
    if isinstance(node, ast.BinOp):
        return ok(node.left) and ok(node.right)
    if isinstance(node, ast.BoolOp):
        return all(ok(v) for v in node.values)
    if isinstance(node, ast.Compare):
        return ok(node.left) and all(ok(c) for c in node.comparators)
    if isinstance(node, ast.IfExp):
        return ok(node.test) and ok(node.body) and ok(node.orelse)
    if isinstance(node, ast.Tuple):
        return all(ok(e) for e in node.elts)
    return False


def _number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float, bool)


def _parsed_and_checked(text: Any, ok: Any, what: str, where: str) -> None:
    shown = text[:60] + "..." if isinstance(text, str) and len(text) > 60 else text
    try:
        tree = ast.parse(text, mode="eval") if isinstance(text, str) else None
    except (SyntaxError, ValueError, RecursionError):
        tree = None
    if tree is None or not ok(tree.body):
        raise _Refused(f"holds {what} that is not plain arithmetic: {shown!r} ({where})")
