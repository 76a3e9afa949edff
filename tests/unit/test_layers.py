"""The import layers, read from the code's own imports (every ``import`` statement, inside functions too;
``if TYPE_CHECKING:`` blocks left out, since they never run):

- no cycles anywhere in ``convkit``;
- ``core/``, ``graph/`` and ``report/`` never import a framework, nor a front end's own package;
- files under an ``env/`` folder (run inside a framework's environment) never import convkit;
- no module grows past ``MAX_LINES`` unless it is listed, with its reason, in ``LONG_MODULES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import convkit

PACKAGE = Path(convkit.__file__).parent
FRAMEWORKS = {
    "torch", "torchvision", "tensorflow", "keras", "tf2onnx", "onnxscript", "jax", "jaxlib", "flax",
    "jax2onnx", "optax", "paddle", "paddle2onnx", "mxnet", "chainer", "onnx_chainer", "caffe2onnx", "cv2",
    "pytensor", "theano",
}  # fmt: skip
FRAMEWORK_FREE = ("convkit.core", "convkit.graph", "convkit.report")
MAX_LINES = 450
LONG_MODULES = {
    # a table-driven converter: one handler per PyTensor Op, read one handler at a time (see its docstring)
    "convkit.frontends.theano.env.converter",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(text: str, module: str, is_package: bool = False) -> set[str]:
    """Every module name the source ``text`` of ``module`` imports (absolute; ``from a import b`` gives
    ``a.b`` when that is a module of convkit, else ``a``)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(text))
    return found


def _cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """The cycles a depth-first walk meets (each as ``a -> b -> a``)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in edges.get(module, []):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[module] = 2

    for module in edges:
        if module not in state:
            walk(module)
    return cycles


GRAPH = {
    module: _imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
    for module, path in MODULES.items()
}


def _is_env_file(module: str) -> bool:
    return ".env." in f"{module}." and not module.endswith(".env")


def test_there_are_no_import_cycles():
    edges = {
        module: sorted(target for target in targets if target in MODULES and target != module)
        for module, targets in GRAPH.items()
    }
    cycles = _cycles(edges)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_check_reads_imports_inside_functions_and_skips_type_checking_blocks():
    text = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import convkit.cli\n"
        "def f():\n    from convkit.frontends import torch\n    from . import errors\n"
    )
    found = _imports(text, "convkit.api")
    assert {"convkit.frontends.torch", "convkit.errors"} <= found
    assert "convkit.cli" not in found
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("layer", FRAMEWORK_FREE)
def test_the_framework_free_layers_import_no_framework_and_no_front_end(layer: str):
    wrong = []
    for module, targets in GRAPH.items():
        if module != layer and not module.startswith(f"{layer}."):
            continue
        for target in sorted(targets):
            top = target.split(".")[0]
            front_end = target.startswith("convkit.frontends.") and target != "convkit.frontends.base"
            if top in FRAMEWORKS or front_end:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_files_that_run_in_a_framework_environment_never_import_convkit():
    env_files = [module for module in MODULES if _is_env_file(module)]
    assert len(env_files) >= 10  # the protocol, and every worker framework's files
    wrong = [
        f"{module} imports {target}"
        for module in env_files
        for target in sorted(GRAPH[module])
        if target.split(".")[0] == "convkit"
    ]
    assert wrong == []


def test_no_module_is_longer_than_a_sitting_unless_listed_with_its_reason():
    long = {
        module: len(path.read_text(encoding="utf-8").splitlines())
        for module, path in MODULES.items()
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES
    }
    assert set(long) <= LONG_MODULES, f"over {MAX_LINES} lines: {long}"
