"""The generator's state while it walks the graph: the values, the submodules and their weights, the lines of
``forward``; and the source file it renders at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convkit import __version__
from convkit.errors import UnsupportedModelError
from convkit.migrate.values import TORCH_DTYPES, Const, Sym, Tensor, Value, identifier, literal


def unsupported(node: Any, why: str = "") -> UnsupportedModelError:
    """The one error for a node the generator cannot write exactly (never approximated)."""
    detail = f": {why}" if why else ""
    return UnsupportedModelError(
        f"op '{node.op_type}' (node '{node.name or node.output[0]}') has no PyTorch mapping{detail}",
        "nothing was written; the op list convkit maps is in convkit/migrate/ops_*.py",
        stage="capture",
    )


@dataclass
class Emitter:
    """Accumulates the module's ``__init__`` lines, ``forward`` lines and state dict."""

    values: dict[str, Value]
    ranks: dict[str, int]
    dims: dict[str, list[int | None]]
    users: dict[str, list[Any]]
    """Value name -> the nodes that read it (a graph output counts as a reader: ``None``)."""
    dtypes: dict[str, np.dtype[Any]] = field(default_factory=dict)
    first_input: str = "x"
    init_lines: list[str] = field(default_factory=list)
    forward_lines: list[str] = field(default_factory=list)
    state: dict[str, np.ndarray] = field(default_factory=dict)
    attributes: set[str] = field(default_factory=set)
    variables: set[str] = field(default_factory=set)
    skipped: set[int] = field(default_factory=set)
    """Nodes folded into an earlier node's module (the ``Add`` of a ``MatMul`` that became ``nn.Linear``)."""
    shared: dict[tuple[Any, ...], str] = field(default_factory=dict)
    const_attrs: dict[int, str] = field(default_factory=dict)

    # -------------------------------------------------------------------------------------------- values
    def const(self, name: str) -> np.ndarray | None:
        value = self.values.get(name) if name else None
        return value.array if isinstance(value, Const) else None

    def rank(self, name: str) -> int | None:
        value = self.values.get(name)
        if isinstance(value, Tensor) and value.rank is not None:
            return value.rank
        if isinstance(value, Const):
            return value.array.ndim
        return self.ranks.get(name)

    def tensor(self, name: str) -> str:
        """``name`` as a tensor expression: a local variable, or a registered buffer/parameter."""
        value = self.values[name]
        if isinstance(value, Tensor):
            return value.var
        if isinstance(value, Sym):
            dtype = "torch.float32" if value.floating else "torch.int64"
            return f"torch.tensor({value.python()}, dtype={dtype}, device={self.first_input}.device)"
        return self.constant_attribute(name, value)

    def operand(self, name: str) -> str:
        """``name`` for an elementwise operator: a 0-D constant or shape scalar stays a Python number."""
        value = self.values[name]
        if isinstance(value, Const) and value.array.ndim == 0 and value.array.dtype.kind in "fiub":
            return literal(value.array.item())
        if isinstance(value, Sym) and value.scalar and value.entries is not None:
            return str(value.entries[0])
        return self.tensor(name)

    def constant_attribute(self, name: str, value: Const) -> str:
        """Register a constant once, as a parameter (a weight: trainable) or a buffer; ``self.<attr>``.

        NOTE: why trainable only when it comes from a float initializer with more than one element: those
        are the model's weights (a Caffe ``Scale``, a bias added after a ``MatMul``); constants the exporter
        wrote (epsilons, ``Softsign``'s one, shape arithmetic) must stay what they are while fine-tuning.
        """
        key = id(value)
        if key in self.const_attrs:
            return f"self.{self.const_attrs[key]}"
        array = value.array
        attr = identifier(value.source or name, self.attributes, "const")
        self.const_attrs[key] = attr
        self.state[attr] = np.ascontiguousarray(array)
        empty = f"torch.empty({tuple(array.shape)!r}, dtype={torch_dtype(array.dtype)})"
        if value.trainable and array.dtype.kind == "f" and array.size > 1:
            self.init_lines.append(f"self.{attr} = nn.Parameter({empty})")
        else:
            self.init_lines.append(f'self.register_buffer("{attr}", {empty})')
        return f"self.{attr}"

    def dtype_of(self, name: str) -> np.dtype[Any] | None:
        """The element type shape inference gave ``name`` (``None``: unknown)."""
        value = self.values.get(name)
        if isinstance(value, Const):
            return value.array.dtype
        return self.dtypes.get(name)

    def sole_consumer(self, name: str) -> Any:
        """The one node reading ``name``, or ``None`` (several readers, or a graph output)."""
        readers = self.users.get(name, [])
        return readers[0] if len(readers) == 1 else None

    def source_of(self, name: str) -> str:
        """The initializer a constant comes from (for naming), else ``name``."""
        value = self.values.get(name)
        return value.source if isinstance(value, Const) and value.source else name

    # ----------------------------------------------------------------------------------------- writing
    def assign(self, output: str, expression: str, rank: int | None = None) -> str:
        """``var = expression`` in ``forward``; ``output`` becomes a tensor held in ``var``."""
        var = identifier(output, self.variables, "v")
        self.forward_lines.append(f"{var} = {expression}")
        self.values[output] = Tensor(var, rank if rank is not None else self.ranks.get(output))
        return var

    def fresh(self, hint: str) -> str:
        """A new local variable name."""
        return identifier(hint, self.variables, "v")

    def assign_many(self, outputs: list[str], expression: str) -> None:
        """``a, b = expression`` for a node with several tensor outputs (empty names are unused)."""
        names = [identifier(o, self.variables, "v") if o else "_" for o in outputs]
        self.forward_lines.append(f"{', '.join(names)} = {expression}")
        for output, var in zip(outputs, names, strict=True):
            if output:
                self.values[output] = Tensor(var, self.ranks.get(output))

    def module(self, hint: str, constructor: str, weights: dict[str, np.ndarray], key: Any = None) -> str:
        """Declare a submodule ``self.<attr> = constructor`` carrying ``weights`` (state-dict suffix ->
        array); the same ``key`` (op, attributes, weight names) gives the same module back.

        NOTE: why shared by key: an exporter that reuses one initializer in two nodes (a tied weight) means
        one parameter; two modules would untie it as soon as training starts.
        """
        if key is not None and key in self.shared:
            return self.shared[key]
        attr = identifier(hint, self.attributes, "layer")
        self.init_lines.append(f"self.{attr} = {constructor}")
        for suffix, array in weights.items():
            self.state[f"{attr}.{suffix}"] = np.ascontiguousarray(array)
        if key is not None:
            self.shared[key] = attr
        return attr

    def sym(self, output: str, value: Sym) -> None:
        self.values[output] = value


def torch_dtype(dtype: np.dtype[Any]) -> str:
    name = np.dtype(dtype).name
    if name not in TORCH_DTYPES:
        raise UnsupportedModelError(f"a tensor of dtype {name} has no PyTorch equivalent", stage="capture")
    return TORCH_DTYPES[name]


def module_hint(node: Any, weight: str = "") -> str:
    """A readable attribute name: the weight's prefix (``conv1.weight`` -> ``conv1``), else the node's name,
    else the op."""
    for suffix in (".weight", "_weight", ".w_0", "_W", ".W", "/W", ".kernel", "_kernel", "_w"):
        if weight.endswith(suffix) and len(weight) > len(suffix):
            return weight[: -len(suffix)]
    return node.name or node.op_type.lower()


def render(
    emitter: Emitter, inputs: list[tuple[str, str]], outputs: list[str], source_name: str, notes: str
) -> str:
    """The generated ``model.py``: ``Model`` (``__init__`` and ``forward``) and ``load()``."""
    args = ", ".join(f"{var}: torch.Tensor" for _, var in inputs)
    returns = [_output_expression(emitter, name) for name in outputs]
    annotation = (
        "torch.Tensor" if len(returns) == 1 else f"tuple[{', '.join(['torch.Tensor'] * len(returns))}]"
    )
    body_init = emitter.init_lines or ["pass"]
    lines = [
        f'"""{source_name} as a PyTorch module, written by `convkit migrate` (convkit {__version__}).',
        "",
        "Needs only torch. `load()` builds the module with the migrated weights (weights.pt, read with",
        "torch.load(weights_only=True), which never runs code), in eval mode; call `.train()` to fine-tune.",
        notes,
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import math",
        "from pathlib import Path",
        "",
        "import torch",
        "from torch import nn",
        "from torch.nn import functional as F",
        "",
        'WEIGHTS = Path(__file__).resolve().with_name("weights.pt")',
        "",
        "",
        "class Model(nn.Module):",
        f'    """Migrated from {source_name}; inputs {", ".join(name for name, _ in inputs)}."""',
        "",
        "    def __init__(self) -> None:",
        "        super().__init__()",
        *(f"        {line}" for line in body_init),
        "",
        f"    def forward(self, {args}) -> {annotation}:",
        *(f"        {line}" for line in emitter.forward_lines),
        f"        return {', '.join(returns)}",
        "",
        "",
        "def load(path: str | Path = WEIGHTS) -> Model:",
        '    """The migrated module with its weights, in eval mode."""',
        "    model = Model()",
        '    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))',
        "    return model.eval()",
        "",
    ]
    return "\n".join(line.rstrip() for line in lines)


def _output_expression(emitter: Emitter, name: str) -> str:
    return emitter.tensor(name)
