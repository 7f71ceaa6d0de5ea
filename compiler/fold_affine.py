"""Chains of constant adds, subtracts, multiplies and divides folded into one scale and one shift,
and the scale into the convolution before them.

A batch norm that no exporter folded (one after a concatenation, moved onto its parts by
through_concat.py; a file exported without constant folding) decomposes into
``(x - mean) / sqrt(var + eps) * gamma + beta``: four passes over the tensor, which the
convolution epilogue's pattern (a scale, then a bias) does not take. Folded:

  conv2d(x, W), then ((. - m) / d) * g + b  -> conv2d(x, W * s) + t   s = g / d, t = b - m * g / d
Only float32 chains of per-channel constants that start at a convolution, and whose every
intermediate has one reader, are folded: an op by one value is an activation's constant (h-swish's
"+ 3" and "/ 6", h-sigmoid's "* 1/6 + 0.5"), which the fusions match as written. A chain read by
a rounding (a requantisation) and a quantised model's graph are left alone: the integer kernels'
rules match those as written and compute them exactly.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from tvm import relax
from tvm.ir.expr import Constant

from mobilec.compiler.bindings import Bindings, op_name, static_shape
from mobilec.compiler.fusions.base import const_array

_AFFINE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")
_ROUNDING = ("relax.round", "relax.quantize", "relax.floor", "relax.astype")


def _shape(expr) -> Optional[tuple[int, ...]]:
    """The static shape of a float32 tensor, else None."""
    shape = static_shape(expr)
    return tuple(shape) if shape is not None and str(expr.ty.dtype) == "float32" else None


def _step(call) -> Optional[tuple]:
    """(input, scale, shift) of one affine op, ``call`` = input * scale + shift, else None."""
    name = op_name(call)
    if name not in _AFFINE or _shape(call) is None:
        return None
    a, b = call.args
    if isinstance(b, Constant) and not isinstance(a, Constant):
        x, c, first = a, const_array(b), False
    elif isinstance(a, Constant) and not isinstance(b, Constant) and name != "relax.divide":
        x, c, first = b, const_array(a), True
    else:
        return None
    if c.size == 1:
        return None  # one value: an activation's constant (h-swish's "+ 3", "/ 6"), which the fusions match
    if c.dtype != np.float32 or (name == "relax.divide" and not np.all(c != 0)):
        return None  # a division by zero stays as the file wrote it
    if _shape(x) != _shape(call) or np.broadcast_shapes(c.shape, _shape(call)) != _shape(call):
        return None  # the constant must not broadcast the input to a larger shape
    one, zero = np.ones((), np.float32), np.zeros((), np.float32)
    if name == "relax.add":
        return x, one, c
    if name == "relax.multiply":
        return x, c, zero
    if name == "relax.divide":
        with np.errstate(over="ignore"):
            inverse = 1 / c
        return (x, inverse, zero) if np.all(np.isfinite(inverse)) else None  # a reciprocal past float32: as written
    return (x, -one, c) if first else (x, one, -c)  # subtract: c - x, or x - c


def _conv(call) -> bool:
    """A float32 convolution with constant weights, in a layout whose output channel axis is known."""
    if op_name(call) != "relax.nn.conv2d" or not isinstance(call.args[1], Constant) or _shape(call) is None:
        return False
    a = call.attrs
    return const_array(call.args[1]).dtype == np.float32 and a.kernel_layout in ("HWIO", "OIHW") and \
        a.data_layout in ("NHWC", "NCHW") and a.out_layout == a.data_layout


class _Chains:
    """Every foldable chain: its last var -> (the convolution's var, shift), and each such
    convolution -> the scale its weights take."""

    def __init__(self, func: relax.Function):
        g = Bindings(func)
        self.graph = g
        steps = {var: s for var, call in g.value.items() if (s := _step(call)) is not None}
        self.chains, self.scaled = {}, {}
        for var, (x, scale, shift) in steps.items():
            readers = g.users.get(var, [])
            if len(readers) == 1 and readers[0] in steps:
                continue  # inside a chain: its end folds it
            ops = 1
            while x in steps and len(g.users.get(x, [])) == 1:  # walk back to the chain's input
                x, s0, t0 = steps[x]
                scale, shift, ops = s0 * scale, t0 * scale + shift, ops + 1
            self._fold(var, x, scale.astype(np.float32), shift.astype(np.float32), ops)

    def _fold(self, end, x, scale, shift, ops):
        conv = self.graph.value.get(x)
        readers = [self.graph.value.get(r) for r in self.graph.users.get(end, []) if r is not None]
        if any(op_name(r) in _ROUNDING for r in readers):
            return  # a requantisation: the integer kernels' rules take it as written, and compute it exactly
        if _conv(conv) and len(self.graph.users.get(x, [])) == 1 and _per_channel(scale, conv.attrs.data_layout,
                                                                                 _shape(conv)) and \
                (ops > 1 or not np.all(scale == 1)):
            self.scaled[conv] = scale.reshape(-1)
            self.chains[end] = (x, shift)


def _per_channel(scale: np.ndarray, layout: str, out: tuple[int, ...]) -> bool:
    """``scale`` holds one value, or one per output channel broadcast along the channel axis only."""
    if scale.size == 1:
        return True
    at = -1 if layout == "NHWC" else -3
    return scale.ndim >= -at and scale.shape[at] == scale.size == out[at]


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod, chains: _Chains):
        super().__init__(mod)
        self.chains = chains
        self.ends = {chains.graph.value[v]: c for v, c in chains.chains.items()}

    def visit_call_(self, call):
        scale = self.chains.scaled.get(call)
        if scale is not None:  # the convolution, its weights scaled per output channel
            a, w = call.attrs, const_array(call.args[1])
            axis = 3 if a.kernel_layout == "HWIO" else 0
            w = w * scale.reshape([-1 if i == axis else 1 for i in range(4)]) if scale.size > 1 else w * scale[0]
            return relax.op.nn.conv2d(self.visit_expr(call.args[0]), relax.const(w.astype(np.float32)), a.strides,
                                      a.padding, a.dilation, a.groups, a.data_layout, a.kernel_layout, a.out_layout,
                                      a.out_dtype)
        chain = self.ends.get(call)
        if chain is None:
            return super().visit_call_(call)
        x, shift = chain
        y = self.visit_expr(x)  # the convolution, rebuilt with its scaled weights
        return relax.op.add(y, relax.const(shift)) if np.any(shift != 0) else y


def _quantized(func: relax.Function) -> bool:
    """A quantised model's graph: its float chains are the requantisation's arithmetic, which the
    integer kernels' rules match as written and compute exactly (a scale folded into weights
    would not be)."""
    found = []

    def visit(expr):
        if op_name(expr) in ("relax.quantize", "relax.dequantize") or (
                isinstance(expr, Constant) and str(expr.ty.dtype) in ("int8", "uint8", "int32")):
            found.append(expr)

    relax.analysis.post_order_visit(func.body, visit)
    return bool(found)


@relax.transform.function_pass(opt_level=0, name="mobilec.FoldAffine")
class FoldAffine:
    def transform_function(self, func, mod, ctx):
        if not isinstance(func, relax.Function) or _quantized(func):
            return func
        chains = _Chains(func)
        if not chains.chains:
            return func
        return relax.analysis.remove_all_unused(_Rewrite(mod, chains).visit_expr(func))
