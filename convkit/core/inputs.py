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
_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "int": "int64", "long": "int64"}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
_RANGE_RE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


@dataclass
class InputSpec:
    """One model input: a name, dimensions (ints, or strings for symbolic ones) and a dtype.

    ``low``/``high`` bound random integer data (``high`` exclusive), e.g. the vocabulary of an Embedding.
    """

    name: str
    dims: list[int | str]
    dtype: str = "float32"
    low: int = 0
    high: int = 10

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
        raise DataError(f"unknown dtype {text!r}", f"use one of {', '.join(sorted(_DTYPES))}")
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


def specs_from_arrays(arrays: Mapping[str, Any], dynamic_batch: bool = True) -> list[InputSpec]:
    """Specs that describe given data; the first dimension is symbolic unless ``dynamic_batch`` is off."""
    specs = []
    for name, value in arrays.items():
        array = np.asarray(value)
        dims: list[int | str] = list(array.shape)
        if dynamic_batch and dims:
            dims[0] = DEFAULT_BATCH_NAME
        specs.append(InputSpec(name=name, dims=dims, dtype=array.dtype.name))
    return specs


def make_static(specs: Sequence[InputSpec], size: int = EXPORT_SYMBOLIC_SIZE) -> list[InputSpec]:
    """The same specs with every symbolic dimension fixed (``--static``)."""
    return [
        InputSpec(s.name, [d if isinstance(d, int) else size for d in s.dims], s.dtype, s.low, s.high)
        for s in specs
    ]


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
    specs: Sequence[InputSpec], symbolic_size: int = EXPORT_SYMBOLIC_SIZE, seed: int = DEFAULT_SEED
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
        else:
            data[spec.name] = rng.integers(spec.low, spec.high, size=shape).astype(spec.dtype)
    return data


def verification_data_sets(
    specs: Sequence[InputSpec], seed: int = DEFAULT_SEED
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Labelled data sets that check every symbolic dimension at two sizes (one set when all are static)."""
    symbols = sorted({d for s in specs for d in s.symbolic})
    if not symbols:
        return [("static", random_inputs(specs, 1, seed))]
    sets = []
    for size in VERIFY_SYMBOLIC_SIZES:
        label = ",".join(f"{sym}={size}" for sym in symbols)
        sets.append((label, random_inputs(specs, size, seed + size)))
    return sets


def check_names(given: Sequence[str], expected: Sequence[str], what: str) -> None:
    """Raise ``DataError`` listing the expected names when ``given`` does not match them (order-free)."""
    if sorted(given) != sorted(expected):
        raise DataError(
            f"{what} names {', '.join(given) or '(none)'} do not match the model's inputs",
            f"expected: {', '.join(expected)}",
        )
