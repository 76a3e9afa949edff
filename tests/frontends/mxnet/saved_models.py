"""Saves MXNet models the two ways users have them on disk, for the tests of saved symbol models; run in the
MXNet environment as ``python saved_models.py FOLDER``.

- ``FOLDER/residual-symbol.json`` + ``residual-0000.params``: ``residual_bn`` saved the Gluon way, by
  ``HybridBlock.export`` (which names the input ``data``);
- ``FOLDER/legacy/mlp-symbol.json`` + ``mlp-0003.params``: an MLP saved the Module-API way
  (``mx.model.save_checkpoint`` at epoch 3), its head a ``SoftmaxOutput`` with its training label.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mxnet as mx

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "fixtures" / "models"))
import mxnet_models


def save_gluon(folder: Path) -> None:
    block = mxnet_models.residual_bn()
    block.hybridize()
    block(mx.nd.ones((1, 3, 16, 16)))
    block.export(str(folder / "residual"))


def save_module_checkpoint(folder: Path) -> None:
    mx.random.seed(0)
    hidden = mx.sym.Activation(
        mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=8, name="fc"), act_type="relu"
    )
    head = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(hidden, num_hidden=4, name="out"), name="softmax")
    shapes = dict(zip(head.list_arguments(), head.infer_shape(data=(1, 6))[0], strict=True))
    args = {
        n: mx.nd.random.uniform(-1, 1, s) for n, s in shapes.items() if n not in ("data", "softmax_label")
    }
    folder.mkdir(parents=True, exist_ok=True)
    mx.model.save_checkpoint(str(folder / "mlp"), 3, head, args, {})


if __name__ == "__main__":
    target = Path(sys.argv[1])
    save_gluon(target)
    save_module_checkpoint(target / "legacy")
