"""Make the Chainer fixtures under fixtures/chainer/ (reproducible: same seed, same bytes).

    .venv/bin/python scripts/make_chainer_fixtures.py      # re-runs itself in .convkit-envs/chainer

- fixtures/chainer/bn_branches_seed1.npz: weights for ``fixtures/models/chainer_models.py:bn_branches``
  made with seed 1 (the factory uses seed 0), in Chainer's own ``chainer.serializers.save_npz`` format (keys
  ``conv/W``, ``bn/avg_mean`` ...): what ``convkit export ... --framework chainer --weights`` reads.
"""

from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "chainer"
ENV_PYTHON = ROOT / ".convkit-envs" / "chainer" / "bin" / "python"
# NOTE: why a fixed timestamp: np.savez (and so save_npz) stamps each member with the current time; the
# same arrays must give the same bytes.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """What ``np.savez`` writes (one ``.npy`` member per key, uncompressed), with fixed timestamps."""
    partial = path.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(arrays[key]), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_TIME), buffer.getvalue())
    os.replace(partial, path)


def main() -> None:
    import chainer
    from chainer.serializers import DictionarySerializer

    sys.path.insert(0, str(ROOT / "fixtures" / "models"))
    import chainer_models

    FIXTURES.mkdir(parents=True, exist_ok=True)
    target = FIXTURES / "bn_branches_seed1.npz"
    serializer = DictionarySerializer()  # NOTE: why: save_npz's own walk over the links, keys and all
    serializer.save(chainer_models.bn_branches(seed=1))
    write_npz(target, dict(serializer.target))
    fresh = chainer_models.bn_branches()
    chainer.serializers.load_npz(str(target), fresh)  # the file is what Chainer itself loads
    assert np.array_equal(fresh.conv.W.array, chainer_models.bn_branches(seed=1).conv.W.array)
    print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    try:
        import chainer  # noqa: F401
    except ImportError:
        if not ENV_PYTHON.is_file():
            sys.exit("the Chainer environment is missing: .venv/bin/convkit env create chainer")
        os.execv(str(ENV_PYTHON), [str(ENV_PYTHON), __file__])
    main()
