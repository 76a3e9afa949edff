"""ONNX patterns that become real ``torch.nn`` layers: Conv, ConvTranspose, Gemm/MatMul (+Add) -> Linear,
BatchNormalization, LayerNormalization, LSTM, Dropout, PRelu, pooling, LRN.

Each handler writes the node exactly or raises ``unsupported``; a layer whose weight is not a constant falls
back to the functional call with the weight as a tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import helper

from convkit.migrate.emit import Emitter, module_hint, unsupported
from convkit.migrate.values import ints, literal

Handler = Callable[[Emitter, Any], None]


def attrs(node: Any) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _pads(e: Emitter, node: Any, a: dict[str, Any], spatial: int, kernel: list[int]) -> tuple[Any, str]:
    """``padding`` for the torch layer, and a ``F.pad`` prefix for asymmetric padding (or "")."""
    auto = a.get("auto_pad", "NOTSET")
    strides = a.get("strides", [1] * spatial)
    dilations = a.get("dilations", [1] * spatial)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if any(s != 1 for s in strides):
            raise unsupported(node, f"auto_pad {auto} with strides {strides} depends on the input size")
        total = [d * (k - 1) for d, k in zip(dilations, kernel, strict=True)]
        small = [t // 2 for t in total]
        begin = small if auto == "SAME_UPPER" else [t - s for t, s in zip(total, small, strict=True)]
        pads = begin + [t - b for t, b in zip(total, begin, strict=True)]
    elif auto == "VALID":
        pads = [0] * (2 * spatial)
    else:
        pads = list(a.get("pads", [0] * (2 * spatial)))
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return tuple(begin), ""
    torch_pads: list[int] = []
    for b, en in zip(reversed(begin), reversed(end), strict=True):
        torch_pads += [b, en]
    return (0,) * spatial, f"F.pad({{x}}, {torch_pads!r}{{value}})"


def conv(e: Emitter, node: Any) -> None:
    a = attrs(node)
    x, weight_name = node.input[0], node.input[1]
    weight = e.const(weight_name)
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    bias = e.const(bias_name) if bias_name else None
    if weight is None or (bias_name and bias is None):
        raise unsupported(node, "its weight is computed in the graph, not a constant")
    spatial = weight.ndim - 2
    if spatial not in (1, 2, 3):
        raise unsupported(node, f"{spatial}-D convolution")
    kernel = list(weight.shape[2:])
    padding, pre = _pads(e, node, a, spatial, kernel)
    groups = int(a.get("group", 1))
    # NOTE: why fuse the Add that follows: exporters without a bias input (paddle2onnx, convkit's PyTensor
    # converter) add the bias as a (1, C, 1, 1) constant; folded into the layer it is Conv2d's own bias.
    add_node, extra = _bias_add(e, node, weight.shape[0], spatial)
    if bias is None and extra is not None:
        bias = extra
    cls = f"nn.Conv{spatial}d"
    args = [
        f"{weight.shape[1] * groups}", f"{weight.shape[0]}", f"kernel_size={ints(kernel)}",
        f"stride={ints(a.get('strides', [1] * spatial))}", f"padding={ints(padding)}",
    ]  # fmt: skip
    if any(d != 1 for d in a.get("dilations", [1])):
        args.append(f"dilation={ints(a['dilations'])}")
    if groups != 1:
        args.append(f"groups={groups}")
    if bias is None:
        args.append("bias=False")
    weights = {"weight": weight} | ({"bias": bias.reshape(-1)} if bias is not None else {})
    key = ("Conv", weight_name, bias_name, repr(sorted(a.items())), add_node)
    attr = e.module(module_hint(node, weight_name), f"{cls}({', '.join(args)})", weights, key)
    source = e.tensor(x)
    if pre:
        source = pre.format(x=source, value="")
    output = add_node.output[0] if add_node is not None else node.output[0]
    e.assign(output, f"self.{attr}({source})")


def _bias_add(e: Emitter, node: Any, channels: int, spatial: int) -> tuple[Any, np.ndarray | None]:
    """The ``Add`` of a constant per-channel bias that alone consumes ``node``'s output, if any."""
    follower = e.sole_consumer(node.output[0])
    if follower is None or follower.op_type != "Add" or (len(node.input) > 2 and node.input[2]):
        return None, None
    other = [i for i in follower.input if i != node.output[0]]
    bias = e.const(other[0]) if len(other) == 1 else None
    if bias is None or bias.size != channels or bias.dtype.kind != "f":
        return None, None
    if spatial and bias.shape not in ((1, channels) + (1,) * spatial, (channels,) + (1,) * spatial):
        return None, None
    if not spatial and bias.shape not in ((channels,), (1, channels)):
        return None, None
    e.skipped.add(id(follower))
    return follower, bias


def conv_transpose(e: Emitter, node: Any) -> None:
    a = attrs(node)
    weight = e.const(node.input[1])
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = e.const(bias_name) if bias_name else None
    if weight is None or (bias_name and bias is None):
        raise unsupported(node, "its weight is computed in the graph, not a constant")
    if "output_shape" in a or a.get("auto_pad", "NOTSET") != "NOTSET":
        raise unsupported(node, "output_shape / auto_pad depend on the input size")
    spatial = weight.ndim - 2
    pads = list(a.get("pads", [0] * (2 * spatial)))
    if pads[:spatial] != pads[spatial:]:
        raise unsupported(node, f"asymmetric pads {pads}")
    groups = int(a.get("group", 1))
    args = [
        f"{weight.shape[0]}", f"{weight.shape[1] * groups}", f"kernel_size={ints(weight.shape[2:])}",
        f"stride={ints(a.get('strides', [1] * spatial))}", f"padding={ints(pads[:spatial])}",
        f"output_padding={ints(a.get('output_padding', [0] * spatial))}",
        f"dilation={ints(a.get('dilations', [1] * spatial))}", f"groups={groups}", f"bias={bias is not None}",
    ]  # fmt: skip
    weights = {"weight": weight} | ({"bias": bias} if bias is not None else {})
    attr = e.module(
        module_hint(node, node.input[1]), f"nn.ConvTranspose{spatial}d({', '.join(args)})", weights
    )
    e.assign(node.output[0], f"self.{attr}({e.tensor(node.input[0])})")


def gemm(e: Emitter, node: Any) -> None:
    a = attrs(node)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    trans_a, trans_b = int(a.get("transA", 0)), int(a.get("transB", 0))
    b = e.const(node.input[1])
    c_name = node.input[2] if len(node.input) > 2 else ""
    c = e.const(c_name) if c_name else None
    if b is not None and not trans_a and alpha == 1.0 and (not c_name or c is not None):
        weight = b if trans_b else b.T
        bias = None if c is None else np.broadcast_to(c * beta, (1, weight.shape[0]))[0]
        if c is None or c.size in (1, weight.shape[0]):
            _linear(e, node, node.output[0], weight, bias, node.input[1], c_name)
            return
    left = e.tensor(node.input[0]) + (".t()" if trans_a else "")
    right = e.tensor(node.input[1]) + (".t()" if trans_b else "")
    expression = f"{left} @ {right}" if alpha == 1.0 else f"{literal(alpha)} * ({left} @ {right})"
    if c_name:
        term = e.operand(c_name) if beta == 1.0 else f"{literal(beta)} * {e.operand(c_name)}"
        expression = f"{expression} + {term}"
    e.assign(node.output[0], expression, 2)


def matmul(e: Emitter, node: Any) -> None:
    b = e.const(node.input[1])
    if b is not None and b.ndim == 2 and b.dtype.kind == "f":
        add_node, bias = _bias_add(e, node, b.shape[1], 0)
        output = add_node.output[0] if add_node is not None else node.output[0]
        bias_name = "" if add_node is None else next(i for i in add_node.input if i != node.output[0])
        _linear(e, node, output, np.ascontiguousarray(b.T), None if bias is None else bias.reshape(-1),
                node.input[1], bias_name)  # fmt: skip
        return
    e.assign(node.output[0], f"torch.matmul({e.tensor(node.input[0])}, {e.tensor(node.input[1])})")


def _linear(
    e: Emitter, node: Any, output: str, weight: np.ndarray, bias: np.ndarray | None, w_name: str, b_name: str
) -> None:
    out_features, in_features = weight.shape
    constructor = f"nn.Linear({in_features}, {out_features}{'' if bias is not None else ', bias=False'})"
    weights = {"weight": weight} | ({"bias": bias} if bias is not None else {})
    hint = module_hint(node, e.source_of(w_name))
    attr = e.module(hint, constructor, weights, ("Linear", w_name, b_name, node.op_type))
    e.assign(output, f"self.{attr}({e.tensor(node.input[0])})")


def batch_norm(e: Emitter, node: Any) -> None:
    a = attrs(node)
    if int(a.get("training_mode", 0)) or len([o for o in node.output if o]) > 1:
        raise unsupported(node, "training-mode BatchNormalization (running statistics as outputs)")
    scale, bias, mean, var = (e.const(n) for n in node.input[1:5])
    if scale is None or bias is None or mean is None or var is None:
        raise unsupported(node, "its scale, bias or statistics are computed in the graph")
    rank = e.rank(node.input[0])
    if rank is None or rank < 2 or rank > 5:
        raise unsupported(node, f"input rank {rank} (BatchNorm1d/2d/3d take 2 to 5 dimensions)")
    kind = {2: 1, 3: 1, 4: 2, 5: 3}[rank]
    # NOTE: why 1 - momentum: ONNX keeps ``running * momentum + batch * (1 - momentum)``, torch the opposite
    momentum = 1.0 - float(a.get("momentum", 0.9))
    constructor = (
        f"nn.BatchNorm{kind}d({scale.shape[0]}, eps={literal(np.float32(a.get('epsilon', 1e-5)))}, "
        f"momentum={literal(round(momentum, 7))})"
    )
    weights = {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var,
               "num_batches_tracked": np.array(0, np.int64)}  # fmt: skip
    attr = e.module(module_hint(node, e.source_of(node.input[1])), constructor, weights)
    e.assign(node.output[0], f"self.{attr}({e.tensor(node.input[0])})")


def layer_norm(e: Emitter, node: Any) -> None:
    a = attrs(node)
    scale = e.const(node.input[1])
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = e.const(bias_name) if bias_name else None
    rank = e.rank(node.input[0])
    axis = int(a.get("axis", -1))
    if (
        scale is None
        or (bias_name and bias is None)
        or rank is None
        or len([o for o in node.output if o]) > 1
    ):
        raise unsupported(
            node, "a non-constant scale/bias, an unknown input rank, or the mean/stddev outputs"
        )
    axis = axis + rank if axis < 0 else axis
    known = e.dims.get(node.input[0], [None] * rank)[axis:]
    if any(d is None for d in known):
        raise unsupported(node, "the normalized dimensions are not known statically")
    shape = tuple(int(d or 0) for d in known)
    if scale.size != int(np.prod(shape)):
        raise unsupported(node, f"scale of shape {scale.shape} for normalized dimensions {shape}")
    eps = literal(np.float32(a.get("epsilon", 1e-5)))
    constructor = f"nn.LayerNorm({list(shape)!r}, eps={eps}{'' if bias is not None else ', bias=False'})"
    weights = {"weight": scale.reshape(shape)} | ({"bias": bias.reshape(shape)} if bias is not None else {})
    key = ("LayerNorm", node.input[1], bias_name, eps, shape)
    attr = e.module(module_hint(node, e.source_of(node.input[1])), constructor, weights, key)
    e.assign(node.output[0], f"self.{attr}({e.tensor(node.input[0])})")


def dropout(e: Emitter, node: Any) -> None:
    ratio = e.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    p = float(ratio) if ratio is not None else float(attrs(node).get("ratio", 0.5))
    if len(node.input) > 2 and node.input[2] and e.const(node.input[2]) is None:
        raise unsupported(node, "its training_mode is computed in the graph")
    # NOTE: why nn.Dropout although the ONNX model always runs in inference mode: it is the layer the
    # original model trained with; module.train() turns it back on, module.eval() (as exported) off.
    attr = e.module(node.name or "dropout", f"nn.Dropout(p={literal(p)})", {})
    e.assign(node.output[0], f"self.{attr}({e.tensor(node.input[0])})")
    if len(node.output) > 1 and node.output[1]:
        e.assign(node.output[1], f"torch.ones_like({e.tensor(node.input[0])}, dtype=torch.bool)")


def prelu(e: Emitter, node: Any) -> None:
    slope = e.const(node.input[1])
    rank = e.rank(node.input[0])
    channels = e.dims.get(node.input[0], [None, None])[1] if rank and rank >= 2 else None
    if slope is not None and rank is not None:
        squeezed = slope.reshape(-1)
        per_channel = slope.size == channels and slope.shape in (
            (channels,) + (1,) * (rank - 2), (1, channels) + (1,) * (rank - 2)
        ) and (rank > 2 or slope.ndim == 1)  # fmt: skip
        if slope.size == 1 or per_channel:
            attr = e.module(module_hint(node, e.source_of(node.input[1])),
                            f"nn.PReLU({squeezed.size})", {"weight": squeezed})  # fmt: skip
            e.assign(node.output[0], f"self.{attr}({e.tensor(node.input[0])})")
            return
    x = e.tensor(node.input[0])
    e.assign(node.output[0], f"torch.where({x} >= 0, {x}, {x} * {e.tensor(node.input[1])})")


def pool(e: Emitter, node: Any) -> None:
    a = attrs(node)
    kernel = list(a["kernel_shape"])
    spatial = len(kernel)
    if len([o for o in node.output if o]) > 1:
        raise unsupported(node, "the Indices output")
    padding, pre = _pads(e, node, a, spatial, kernel)
    is_max = node.op_type == "MaxPool"
    args = [f"kernel_size={ints(kernel)}", f"stride={ints(a.get('strides', [1] * spatial))}"]
    if any(padding):
        args.append(f"padding={ints(padding)}")
    if is_max and any(d != 1 for d in a.get("dilations", [1])):
        args.append(f"dilation={ints(a['dilations'])}")
    elif not is_max and any(d != 1 for d in a.get("dilations", [1])):
        raise unsupported(node, "dilated average pooling")
    if int(a.get("ceil_mode", 0)):
        args.append("ceil_mode=True")
    if not is_max:
        args.append(f"count_include_pad={bool(a.get('count_include_pad', 0))}")
        if pre and not a.get("count_include_pad", 0):
            raise unsupported(node, "asymmetric pads without count_include_pad")
    if any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
        raise unsupported(node, f"padding {padding} over half the kernel {kernel}")
    cls = f"nn.{'Max' if is_max else 'Avg'}Pool{spatial}d"
    attr = e.module(node.name or cls[3:].lower(), f"{cls}({', '.join(args)})", {})
    source = e.tensor(node.input[0])
    if pre:
        source = pre.format(x=source, value=", value=-math.inf" if is_max else "")
    e.assign(node.output[0], f"self.{attr}({source})")


def global_pool(e: Emitter, node: Any) -> None:
    rank = e.rank(node.input[0])
    if rank is None:
        raise unsupported(node, "unknown input rank")
    dims = list(range(2, rank))
    fn = "torch.mean" if node.op_type == "GlobalAveragePool" else "torch.amax"
    e.assign(node.output[0], f"{fn}({e.tensor(node.input[0])}, dim={dims!r}, keepdim=True)", rank)


def lrn(e: Emitter, node: Any) -> None:
    a = attrs(node)
    constructor = (
        f"nn.LocalResponseNorm({int(a['size'])}, alpha={literal(np.float32(a.get('alpha', 1e-4)))}, "
        f"beta={literal(np.float32(a.get('beta', 0.75)))}, k={literal(np.float32(a.get('bias', 1.0)))})"
    )
    attr = e.module(node.name or "lrn", constructor, {})
    e.assign(node.output[0], f"self.{attr}({e.tensor(node.input[0])})")


LAYER_OPS: dict[str, Handler] = {
    "Conv": conv, "ConvTranspose": conv_transpose, "Gemm": gemm, "MatMul": matmul,
    "BatchNormalization": batch_norm, "LayerNormalization": layer_norm, "Dropout": dropout, "PRelu": prelu,
    "MaxPool": pool, "AveragePool": pool, "GlobalAveragePool": global_pool, "GlobalMaxPool": global_pool,
    "LRN": lrn,
}  # fmt: skip
