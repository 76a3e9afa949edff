"""Write convkit/reference/data/digits.npz: the UCI optical handwritten digits (8x8, 0..16, 1797 images) as
bundled with scikit-learn, so training needs neither scikit-learn nor a download.

    python -m venv /tmp/skl && /tmp/skl/bin/pip install scikit-learn
    /tmp/skl/bin/python scripts/make_digits.py

Source: E. Alpaydin and C. Kaynak, UCI Machine Learning Repository, "Optical Recognition of Handwritten
Digits" (CC BY 4.0), https://archive.ics.uci.edu/dataset/80.
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

digits = load_digits()
target = Path(__file__).resolve().parent.parent / "convkit" / "reference" / "data" / "digits.npz"
target.parent.mkdir(parents=True, exist_ok=True)
np.savez_compressed(target, images=digits.images.astype(np.uint8), labels=digits.target.astype(np.int64))
print(f"wrote {target}: {digits.images.shape[0]} images")
