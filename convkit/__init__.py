"""convkit: export models from many frameworks to ONNX, prove numerical parity, run them with onnxruntime.

Nothing heavy is imported here: ``import convkit`` and ``convkit --help`` stay fast and framework-free.
"""

from __future__ import annotations

__version__ = "0.1.0"
