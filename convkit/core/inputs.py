"""Input specifications (``--input NAME:DIMS[:DTYPE[:LOW..HIGH]]``) and the seeded data made from them."""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from convkit.errors import DataError

# NOTE: why these sizes: torch.export specialises dimensions whose example size is 0 or 1, so exports trace
# with 2; verification then checks every symbolic dimension at 1 and at 3, because bugs that show only at
# another batch size are common (pytorch#148886).
EXPORT_SYMBOLIC_SIZE = 2
VERIFY_SYMBOLIC_SIZES = (1, 3)
DEFAULT_SEED = 0
DEFAULT_BATCH_NAME = "batch"

_DTYPES = {
    "float32",
    "float64",
    "float16",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool",
}
# NOTE: why these and not NumPy's codes: fp32/f32, half and long are what users type from other tools
# (TensorRT, Rust, PyTorch); "i8" means int64 to NumPy but int8 to Rust, so such codes stay unknown
_ALIASES = {
    "float": "float32",
    "fp32": "float32",
    "f32": "float32",
    "double": "float64",
    "fp64": "float64",
    "f64": "float64",
    "half": "float16",
    "fp16": "float16",
    "f16": "float16",
    "int": "int64",
    "long": "int64",
    "boolean": "bool",
}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
_RANGE_RE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


@dataclass
class InputSpec:
    """One model input: a name, dimensions (ints, or strings for symbolic ones) and a dtype.

    ``low``/``high`` bound random integer data (``high`` exclusive), e.g. the vocabulary of an Embedding.

    The contract on dims, for every front end:

    - a string dim (``batch``, or any name from ``--input``) MUST be dynamic: an exporter that fixes it is an
      error (``graph.conform`` raises it), as it always was;
    - an int dim is a fixed size, unless its axis is listed in ``dynamic_if_allowed``: then the size is only
      the example's (``--data``, see ``specs_from_arrays``) and the axis is dynamic *if the model allows it*.
      A front end that can ask its framework which dims the model allows makes those dynamic (a string dim
      of its choosing, see ``resolve_dynamic_dims``), keeps the others at the example's size and says which
      in a note (``kept_static_note``); it passes ``graph.conform`` the resolved specs, whose int dims conform
      writes as fixed sizes. A front end that does not read ``dynamic_if_allowed`` treats those axes as the
      fixed sizes they are: exactly the behaviour before the field existed.

    The core learns which axes became dynamic from the exported file (``settle_dynamic_dims``), so a front
    end reports nothing more than its ONNX file and its notes.
    """

    name: str
    dims: list[int | str]
    dtype: str = "float32"
    low: int = 0
    high: int = 10
    dynamic_if_allowed: tuple[int, ...] = ()

    @property
    def symbolic(self) -> list[str]:
        return [d for d in self.dims if isinstance(d, str)]

    def shape(self, symbolic_size: int | Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape, with every symbolic dimension set to ``symbolic_size`` (or its entry)."""
        sizes = symbolic_size if isinstance(symbolic_size, Mapping) else None
        return tuple(
            d if isinstance(d, int) else (sizes[d] if sizes is not None else int(symbolic_size))  # type: ignore[arg-type]
            for d in self.dims
        )

    def describe(self) -> str:
        return f"{self.name}:{','.join(str(d) for d in self.dims)}:{self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.dims), "dtype": self.dtype}


def memory_limit() -> int | None:
    """Bytes of memory this process can have at most: physical memory, lowered by a cgroup or address-space
    limit where one is set; ``None`` where none can be read.

    NOTE: why the total and not what is free now: the check refuses what can never fit (a header or an
    option asking for terabytes); what is free changes from second to second, and refusing on it would make
    the same command pass or fail with the load of the machine.
    """
    limits: list[int] = []
    with contextlib.suppress(AttributeError, ValueError, OSError):  # not on a POSIX system
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(cgroup) as file:
                text = file.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(soft)
    except (ImportError, ValueError, OSError):  # pragma: no cover - not on a POSIX system
        pass
    positive = [limit for limit in limits if limit > 0]
    return min(positive) if positive else None


def check_fits_in_memory(nbytes: int, what: str, hint: str) -> None:
    """Refuse to allocate ``nbytes`` when they exceed this machine's memory (see ``memory_limit``).

    NOTE: why before allocating: numpy's MemoryError (or "array is too big") arrives only after the
    attempt, as a bug-class failure, and an allocation just under the limit can push the machine into swap
    or the OOM killer first; the arithmetic on the declared size is exact and costs nothing.

    Args:
        nbytes: the bytes the allocation would take.
        what: what would be allocated, for the message (``"random data for input 'x' ..."``).
        hint: what the user can change.

    Raises:
        DataError: naming ``what``, the bytes asked for and the memory there is.
    """
    limit = memory_limit()
    if limit is not None and nbytes > limit:
        raise DataError(
            f"{what} needs {nbytes:,} bytes ({_human(nbytes)}), more than this machine's memory "
            f"({limit:,} bytes, {_human(limit)})",
            hint,
        )


def _human(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} bytes"
    size = float(nbytes)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        size /= 1024
        if size < 1024 or unit == "PiB":
            break
    return f"{size:.1f} {unit}"


def normalize_dtype(text: str) -> str:
    """``float`` -> ``float32`` and the like; raises ``DataError`` for unknown dtypes."""
    name = _ALIASES.get(text.strip().lower(), text.strip().lower())
    if name not in _DTYPES:
        known = f"{', '.join(sorted(_DTYPES))} (or fp32, fp16, fp64, half, int)"
        raise DataError(f"unknown dtype {text!r}", f"use one of {known}")
    return name


def parse_input_spec(text: str) -> InputSpec:
    """Parse ``NAME:DIMS[:DTYPE[:LOW..HIGH]]``: ``x:batch,3,224,224:float32``, ``ids:batch,16:int64:0..1000``.

    Raises:
        DataError: with the expected form in the hint.
    """
    form = "expected NAME:DIMS[:DTYPE[:LOW..HIGH]], e.g. x:batch,3,224,224:float32"
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 4 or not parts[0] or not parts[1]:
        raise DataError(f"cannot read --input {text!r}", form)
    name = parts[0]
    if not _NAME_RE.match(name):
        raise DataError(f"--input {text!r}: {name!r} is not a valid input name", form)
    dims: list[int | str] = []
    for raw in parts[1].split(","):
        raw = raw.strip()
        if raw.isdigit():
            dims.append(int(raw))
        elif re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", raw):
            dims.append(raw)
        else:
            raise DataError(f"--input {text!r}: dimension {raw!r} is neither a size nor a symbol", form)
    spec = InputSpec(name=name, dims=dims, dtype=normalize_dtype(parts[2]) if len(parts) > 2 else "float32")
    if len(parts) == 4:
        match = _RANGE_RE.match(parts[3])
        if not match or int(match.group(1)) >= int(match.group(2)):
            raise DataError(f"--input {text!r}: range {parts[3]!r} is not LOW..HIGH with LOW < HIGH", form)
        spec.low, spec.high = int(match.group(1)), int(match.group(2))
    return spec


def specs_from_arrays(
    arrays: Mapping[str, Any], dynamic_batch: bool = True, dynamic_if_allowed: bool = False
) -> list[InputSpec]:
    """Specs that describe given data: the first dimension is symbolic (``batch``) unless ``dynamic_batch``
    is off; with ``dynamic_if_allowed`` every other axis keeps the data's size and is listed in the spec's
    ``dynamic_if_allowed`` (dynamic where the model allows it; see ``InputSpec``)."""
    specs = []
    for name, value in arrays.items():
        array = np.asarray(value)
        dims: list[int | str] = list(array.shape)
        if dynamic_batch and dims:
            dims[0] = DEFAULT_BATCH_NAME
        others = tuple(range(1, len(dims))) if dynamic_if_allowed else ()
        specs.append(InputSpec(name=name, dims=dims, dtype=array.dtype.name, dynamic_if_allowed=others))
    return specs


def make_static(
    specs: Sequence[InputSpec], size: int | Mapping[str, Sequence[int]] = EXPORT_SYMBOLIC_SIZE
) -> list[InputSpec]:
    """The same specs with every dimension fixed (``--static``): symbolic ones at ``size``, or at the
    example's shape (``size`` maps input names to shapes); ``dynamic_if_allowed`` emptied."""
    fixed = []
    for s in specs:
        shape = size.get(s.name) if isinstance(size, Mapping) else None
        dims: list[int | str] = [
            d if isinstance(d, int) else (int(shape[k]) if shape is not None else int(size))  # type: ignore[arg-type]
            for k, d in enumerate(s.dims)
        ]
        fixed.append(InputSpec(s.name, dims, s.dtype, s.low, s.high))
    return fixed


def resolve_dynamic_dims(
    specs: Sequence[InputSpec], symbols: Mapping[tuple[str, int], str]
) -> list[InputSpec]:
    """Settle each spec's ``dynamic_if_allowed`` axes from what the framework found: ``symbols`` maps
    ``(input, axis)`` to the framework's symbol for every axis it left dynamic (symbolic axes included, so
    that an axis sharing the batch's symbol is called ``batch``); the axes not in it keep their size.

    Axes with one symbol become one dim, named (in this order of preference): after a symbolic axis of the
    specs that shares it; ``seq`` for the first symbol at axis 1 of a 2-D integer or bool input (token ids,
    masks) and ``<input>_seq`` for a later one (T5's ``decoder_input_ids``); else ``<input>_dim<axis>`` of
    its first axis. Returns new specs with ``dynamic_if_allowed`` emptied.
    """
    named: dict[str, str] = {}
    taken = {d for spec in specs for d in spec.symbolic}
    for spec in specs:
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, str) and (spec.name, axis) in symbols:
                named.setdefault(symbols[(spec.name, axis)], dim)

    def name(symbol: str, wanted: str) -> None:
        if symbol in named:
            return
        wanted = re.sub(r"\W", "_", wanted)
        unique, k = wanted, 2
        while unique in taken:
            unique, k = f"{wanted}_{k}", k + 1
        named[symbol] = unique
        taken.add(unique)

    flexible = [(s, axis) for s in specs for axis in s.dynamic_if_allowed if (s.name, axis) in symbols]
    sequences = 0
    for spec, axis in flexible:
        symbol = symbols[(spec.name, axis)]
        if symbol not in named and axis == 1 and len(spec.dims) == 2 and np.dtype(spec.dtype).kind in "iub":
            name(symbol, f"{spec.name}_seq" if sequences else "seq")
            sequences += 1
    for spec, axis in flexible:
        name(symbols[(spec.name, axis)], f"{spec.name}_dim{axis}")
    resolved = []
    for spec in specs:
        dims = list(spec.dims)
        for axis in spec.dynamic_if_allowed:
            if (spec.name, axis) in symbols:
                dims[axis] = named[symbols[(spec.name, axis)]]
        resolved.append(InputSpec(spec.name, dims, spec.dtype, spec.low, spec.high))
    return resolved


def settle_dynamic_dims(
    specs: Sequence[InputSpec], exported: Mapping[str, Sequence[int | str | None]]
) -> list[InputSpec]:
    """The specs as the exported file has them: each ``dynamic_if_allowed`` axis takes the file's dim
    (``exported``: input name -> its dims, symbolic ones by name), a symbol where the front end made it
    dynamic, else the example's size; ``dynamic_if_allowed`` emptied. Other dims stay as they are."""
    settled = []
    for spec in specs:
        dims = list(spec.dims)
        found = exported.get(spec.name)
        for axis in spec.dynamic_if_allowed:
            if found is not None and axis < len(found) and isinstance(found[axis], str) and found[axis]:
                dims[axis] = str(found[axis])
        settled.append(InputSpec(spec.name, dims, spec.dtype, spec.low, spec.high))
    return settled


def kept_static_note(kept: Sequence[tuple[str, int, int]], why: str) -> str | None:
    """``kept static: pixel_values axes 2, 3 (224, 224): the model fixes them`` for ``(input, axis, size)``
    triples, grouped by input; ``None`` when nothing was kept. ``why`` ends the note (``the model fixes``
    takes ``it``/``them``: pass the text before the pronoun with ``{it}``)."""
    if not kept:
        return None
    by_input: dict[str, list[tuple[int, int]]] = {}
    for name, axis, size in kept:
        by_input.setdefault(name, []).append((axis, size))
    parts = []
    for name, axes in by_input.items():
        label = "axis" if len(axes) == 1 else "axes"
        parts.append(
            f"{name} {label} {', '.join(str(a) for a, _ in axes)} ({', '.join(str(s) for _, s in axes)})"
        )
    return f"kept static: {'; '.join(parts)}: {why.format(it='it' if len(kept) == 1 else 'them')}"


def check_random_inputs_fit(
    specs: Sequence[InputSpec],
    symbolic_size: int | Mapping[str, int] = EXPORT_SYMBOLIC_SIZE,
    hint: str = "use smaller sizes (--input NAME:DIMS, --batch-sizes)",
) -> None:
    """Refuse, before anything is allocated, random data for ``specs`` that cannot fit in memory.

    Raises:
        DataError: naming the input, its shape and the bytes asked for.
    """
    needed = 0
    for spec in specs:
        shape = spec.shape(symbolic_size)
        # NOTE: why the generator's width too: it draws float64 / int64 before the cast, so one input
        # briefly takes its own bytes and 8 per element more
        elements = math.prod(shape)
        needed += elements * np.dtype(spec.dtype).itemsize
        check_fits_in_memory(
            needed + elements * 8,
            f"generating random data for input {spec.name!r} of shape {shape} ({spec.dtype})",
            hint,
        )


def random_inputs(
    specs: Sequence[InputSpec],
    symbolic_size: int | Mapping[str, int] = EXPORT_SYMBOLIC_SIZE,
    seed: int = DEFAULT_SEED,
) -> dict[str, np.ndarray]:
    """Seeded, reproducible data: standard normal floats, integers in ``[low, high)``, random bools.

    Raises:
        DataError: the data would not fit in this machine's memory (checked before anything is allocated).
    """
    check_random_inputs_fit(specs, symbolic_size)
    shapes = [spec.shape(symbolic_size) for spec in specs]
    rng = np.random.default_rng(seed)
    data: dict[str, np.ndarray] = {}
    for spec, shape in zip(specs, shapes, strict=True):
        kind = np.dtype(spec.dtype).kind
        if kind == "f":
            data[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif kind == "b":
            data[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif spec.name.lower().endswith("mask") and (spec.low, spec.high) == (0, 10):
            # NOTE: why: an attention mask is 0/1, and a row masked entirely is undefined in most models
            # (softmax over nothing), so the first position of every row stays visible
            mask = rng.integers(0, 2, size=shape)
            if mask.ndim:
                mask[..., 0] = 1
            data[spec.name] = mask.astype(spec.dtype)
        else:
            data[spec.name] = rng.integers(spec.low, spec.high, size=shape).astype(spec.dtype)
    return data


def verification_data_sets(
    specs: Sequence[InputSpec], seed: int = DEFAULT_SEED, example_sizes: Mapping[str, int] | None = None
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Labelled data sets that check every symbolic dimension at two sizes (one set when all are static).

    Args:
        example_sizes: sizes the export's example gave some symbols (a sequence length, an audio length):
            those are checked at that size and at half as much again, the others (the batch) at 1 and 3.
            NOTE: why: a model may need a length of its own (a convolution over audio needs dozens of
            samples), so 1 and 3 would test the random data rather than the model.
    """
    symbols = sorted({d for s in specs for d in s.symbolic})
    if not symbols:
        return [("static", random_inputs(specs, 1, seed))]
    example = dict(example_sizes or {})
    sets = []
    for k, size in enumerate(VERIFY_SYMBOLIC_SIZES):
        sizes = {
            sym: (example[sym] if k == 0 else example[sym] + max(1, example[sym] // 2))
            if sym in example
            else size
            for sym in symbols
        }
        label = ",".join(f"{sym}={sizes[sym]}" for sym in symbols)
        sets.append((label, random_inputs(specs, sizes, seed + size)))
    return sets


def check_names(given: Sequence[str], expected: Sequence[str], what: str) -> None:
    """Raise ``DataError`` listing the expected names when ``given`` does not match them (order-free)."""
    if sorted(given) != sorted(expected):
        raise DataError(
            f"{what} names {', '.join(given) or '(none)'} do not match the model's inputs",
            f"expected: {', '.join(expected)}",
        )
