"""Hidden channel counts padded to whole wide vectors (AVX-512: 72 -> 80, 120 -> 128).

MobileNetV3's expanded channel counts (72, 120, 184, 200; Small's 88) are multiples of 8 but not
of 16, so on an AVX-512 CPU their kernels ran 256-bit vectors at half the 512-bit rate. onnxruntime
pads every channel count to its 16-channel blocks; mobilec pads only where it pays and stays exact:

A *group* is the set of NHWC tensors that share one channel axis: the output of a 1x1-or-larger
convolution (groups=1), what channel-wise ops make of it (bias, activations, a depthwise
convolution, squeeze-and-excite's pool, the gate, whose FC2 output joins the group through the
gate multiply), closed over both operands of every binary op. When every consumer outside the
group is a convolution (groups=1) reading the group as its input channels, the group is padded:
producers get zero output channels (weights and bias), depthwise convolutions zero taps,
per-channel constants zeros (a divisor ones), and the consumers zero weight rows for the new input
channels. Padded channels hold finite values and are multiplied by zero weights: the model's
outputs are unchanged bit for bit up to summation order. Any other consumer (a residual add with an
unpadded tensor, a reshape, the output) leaves the group as it is. Padding is applied where it adds
at most an eighth (72 -> 80), so the 2x wider vectors win.

An int8 model's groups pad the same way (compiler/quantized.py runs first): its int32
accumulators, 8-bit tensors, requantisation and per-tensor (de)quantisations are channel-wise,
a padded channel holds the zero point (zero weights, bias and multiplier) and zero weight rows
drop it; the 80-channel kernels take AVX-512 VNNI's 512-bit vpdpbusd. Measured, Large int8: the
kernels' sum 5-6% less in both orders of two runs, the whole model 2.99 -> 2.86 ms in one
interleaved run and unchanged in another; outputs identical.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from tvm import relax
from tvm.ir.expr import Constant

from mobilec.compiler.bindings import Bindings, op_name
from mobilec.compiler.fusions.base import const_array

MAX_WASTE = 1 / 8  # padded channels / channels, at most
_CHANNELWISE = {"relax.nn.relu", "relax.clip", "relax.add", "relax.subtract", "relax.multiply", "relax.divide",
                "relax.maximum", "relax.minimum", "relax.sigmoid", "relax.tanh", "relax.nn.silu",
                "relax.astype", "relax.round", "relax.quantize", "relax.dequantize"}  # and an int8 model's
_PER_TENSOR = {"relax.quantize", "relax.dequantize"}  # a scale per channel would be padded with zeros
_DTYPES = ("float32", "int32", "uint8", "int8")  # an int8 model's accumulators and 8-bit tensors too
_POOLS = {"relax.mean", "relax.sum", "relax.max"}





def _shape(expr) -> Optional[list[int]]:
    """The static shape of a float32 (or int8 model's integer) tensor, else None."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None or str(ty.dtype) not in _DTYPES:
        return None
    try:
        return [int(d) for d in ty.shape]
    except (TypeError, AttributeError, ValueError):
        return None


def _nhwc_conv(call) -> bool:
    if op_name(call) != "relax.nn.conv2d":
        return False
    a = call.attrs
    return a.data_layout == "NHWC" and a.kernel_layout == "HWIO" and a.out_layout == "NHWC" and isinstance(
        call.args[1], Constant)


def _dense(call) -> bool:
    """A convolution over all input channels (groups=1): the one kind that may produce or read a
    padded group through its weights."""
    return _nhwc_conv(call) and int(call.attrs.groups) == 1


def _depthwise(call) -> bool:
    shape = _shape(call.args[0])
    return _nhwc_conv(call) and shape is not None and int(call.attrs.groups) == shape[3] > 1 and \
        _shape(call.args[1])[2] == 1


class _Graph(Bindings):
    def group(self, seed, channels: int) -> Optional[set]:
        """The group's vars grown from ``seed``, or None where a member or a reader outside it
        (which must be a dense convolution reading it as its input) cannot be padded."""
        members, todo = set(), [seed]
        while todo:
            v = todo.pop()
            if v in members:
                continue
            members.add(v)
            call = self.value.get(v)
            shape = _shape(v)
            if call is None or shape is None or len(shape) != 4 or shape[3] != channels:
                return None
            name = op_name(call)
            if _depthwise(call):
                todo.append(call.args[0])
            elif _dense(call):
                pass  # a producer: its input is not in the group
            elif name in _CHANNELWISE:
                for i, arg in enumerate(call.args):
                    s = _shape(arg)
                    if isinstance(arg, relax.Var) and s and s[-1] == channels:
                        if name == "relax.divide" and i == 1:
                            return None  # a padded divisor could be zero
                        todo.append(arg)
                    elif name in _PER_TENSOR and i > 0 and s and s[-1] > 1:
                        return None
                    elif s and s[-1] not in (1, channels) or isinstance(arg, relax.Var) and not s:
                        return None  # broadcast along the channels, or an operand of another shape
            elif name in _POOLS:
                axes = [int(a) % 4 for a in call.attrs.axis] if call.attrs.axis is not None else [0, 1, 2, 3]
                if 3 in axes or not call.attrs.keepdims:
                    return None
                todo.append(call.args[0])
            else:
                return None
            for user in self.users.get(v, []):
                if user is None:
                    return None
                use = self.value[user]
                if _dense(use) and use.args[0].same_as(v):
                    if _shape(user) and _shape(user)[3] == channels:
                        todo.append(user)  # a C -> C conv: its output is in the group too
                elif op_name(use) in _CHANNELWISE or op_name(use) in _POOLS or _depthwise(use):
                    todo.append(user)
                else:
                    return None
        return members


def _pad(arr: np.ndarray, axis: int, to: int, value: float = 0.0) -> np.ndarray:
    widths = [(0, 0)] * arr.ndim
    widths[axis] = (0, to - arr.shape[axis])
    return np.pad(arr, widths, constant_values=value)


@relax.expr_functor.mutator
class _Padder(relax.PyExprMutator):
    """Rebuilds the function with each group member's call producing ``to`` channels; a dense
    convolution reading a widened input gets zero weight rows for the new channels."""

    def __init__(self, mod, members: dict):
        super().__init__(mod)
        self.members = members  # call -> the padded channel count of its output

    def visit_call_(self, call):
        args = [self.visit_expr(arg) for arg in call.args]
        to = self.members.get(call)
        if op_name(call) == "relax.nn.conv2d" and isinstance(call.args[1], Constant):
            a, w, groups = call.attrs, const_array(call.args[1]), int(call.attrs.groups)
            reads = _shape(args[0])
            if to and _depthwise(call):
                w, groups = _pad(w, 3, to), to
            elif groups == 1 and reads and w.shape[2] < reads[3]:  # reads a padded group
                w = _pad(w, 2, reads[3])
            if to and groups == 1:
                w = _pad(w, 3, to)
            return relax.op.nn.conv2d(args[0], relax.const(w, str(w.dtype)), a.strides, a.padding, a.dilation, groups,
                                      a.data_layout, a.kernel_layout, a.out_layout, a.out_dtype)
        if to:
            for i, arg in enumerate(args):
                if isinstance(arg, Constant) and _shape(arg) and _shape(arg)[-1] > 1:
                    arr = const_array(arg)
                    padded = _pad(arr, arr.ndim - 1, to, 1.0 if op_name(call) == "relax.divide" and i == 1 else 0.0)
                    args[i] = relax.const(padded, str(padded.dtype))
        return relax.Call(call.op, args, call.attrs, call.ty_args)


@relax.transform.function_pass(opt_level=0, name="mobilec.PadChannels")
class PadChannels:
    """Pad each paddable group whose channel count is not a multiple of ``multiple`` (a CPU's
    widest vector in float32 lanes; 0 or 1: nothing to pad)."""

    def __init__(self, multiple: int):
        self.multiple = multiple

    def transform_function(self, func, mod, ctx):
        if not isinstance(func, relax.Function) or self.multiple <= 1:
            return func
        graph, members = _Graph(func), {}
        for var, call in graph.value.items():
            shape = _shape(var)
            if call in members or not _dense(call) or not shape or len(shape) != 4:
                continue
            channels = shape[3]
            to = -(-channels // self.multiple) * self.multiple
            if to == channels or (to - channels) / channels > MAX_WASTE:
                continue
            group = graph.group(var, channels)
            if group is not None:
                members.update({graph.value[v]: to for v in group})
        return _Padder(mod, members).visit_expr(func) if members else func
