"""``convkit migrate``: any ONNX model back into a readable, trainable PyTorch module, parity proven.

The generator (``generate``) walks the graph once: constants are folded with onnx's reference
implementation, shape arithmetic is evaluated on Python ints (``values``), and each op goes through a table
of handlers (``ops_layers``: Conv, Linear, BatchNorm, LayerNorm, LSTM, Dropout, PReLU, pooling;
``ops_tensor``: elementwise, activations, reductions; ``ops_shape``: layout ops; ``ops_rnn``: LSTM). An op
without a handler stops the migration with the op and the node; nothing is approximated. ``flow`` writes
the package and verifies it against onnxruntime with the same comparison and report as ``verify``.

NOTE: why a generator of our own rather than onnx2torch or torch.fx: onnx2torch builds an ``nn.Module`` of
converter modules (``OnnxGemm``, ``OnnxReshape``), pins torchvision (which pulls a multi-GB CUDA torch), and
replays every shape computation as tensors at run time; its output is not code a person keeps training.
Writing source from an op table gives ``nn.Conv2d``/``nn.Linear``/``nn.BatchNorm2d`` named after the
model's weights and ``x.reshape(x.shape[0], 1600)`` where the exporter wrote seven shape nodes. Measured on
the coverage set (the 8 frameworks' reference CNNs, the 4 legacy second models, the transformer block, the
token LSTM, onnx's 81 pytorch-converted cases), every model migrates with the op table alone but five of
those cases: two Embeddings that random int64 check inputs index out of range, and three PReLUs whose
per-channel slope onnx's opset upgrade leaves broadcasting on the wrong axis (``tests/migrate``).
"""

from __future__ import annotations

from convkit.migrate.flow import MigrateSummary, migrate_model

__all__ = ["MigrateSummary", "migrate_model"]
