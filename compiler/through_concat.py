"""Channel-wise ops moved from a concatenation onto its parts, so they fuse into the parts' producers.

MixNet's mixed-kernel depthwise convolutions, grouped pointwise ones written as split / convolve /
concat, and GhostNet-style modules leave a batch norm and an activation *after* a concatenation,
where no exporter folds them and no kernel can take them as its epilogue: a whole extra pass over
the tensor per block (MixNet-S: 17% of its time). Moved onto the parts, each lands after the
convolution that made its part and fuses there (fold_affine.py folds the batch norm into the
weights):

  f(concat(a, b))              -> concat(f(a), f(b))            f elementwise unary
  g(concat(a, b), c)           -> concat(g(a, c_a), g(b, c_b))  c a constant, sliced along the axis
                                                                (or broadcast along it: used whole)
  g(concat(a, b), concat(d, e)) -> concat(g(a, d), g(b, e))     both split at the same offsets
  x * sigmoid(x)               -> silu(x)                       SiLU as one unary op first
  split(concat(a, b))          -> (a, b)                        at the same offsets
Every reader of a concatenation is moved, so a chain of them moves step by step; a concatenation
left without readers is dropped. A reader of another kind keeps the concatenation it reads.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from mobilec.compiler.bindings import op_name, static_shape
from mobilec.compiler.fusions.base import const_array

_UNARY = {"relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh", "relax.nn.silu", "relax.exp",
          "relax.negative", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.sqrt", "relax.abs"}
_BINARY = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum",
           "relax.power"}


@relax.expr_functor.mutator
class _Mover(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.moved = 0

    def _concat(self, expr):
        """(parts, axis, offsets) of the concatenation ``expr`` (a rebuilt var) is bound to, else None."""
        if not isinstance(expr, relax.Var):
            return None
        bound = self.builder_.lookup_binding(expr)
        if op_name(bound) != "relax.concat" or not isinstance(bound.args[0], relax.Tuple):
            return None
        out = static_shape(bound)
        shapes = [static_shape(p) for p in bound.args[0].fields]
        if out is None or any(s is None or len(s) != len(out) for s in shapes):
            return None
        axis = int(bound.attrs.axis) % len(out)
        return list(bound.args[0].fields), axis, [int(o) for o in np.cumsum([s[axis] for s in shapes])]

    def _slices(self, arg, of_rank: int, axis: int, offsets: list[int]) -> Optional[list]:
        """``arg`` for each part: a constant sliced along the axis (or whole, where it broadcasts
        along it), the parts of a concatenation at the same offsets; else None."""
        if isinstance(arg, Constant):
            arr = const_array(arg)
            at = axis - (of_rank - arr.ndim)  # numpy broadcasting aligns the trailing axes
            if arr.ndim > of_rank:
                return None
            if at < 0 or arr.shape[at] == 1:
                return [arg] * len(offsets)
            if arr.shape[at] != offsets[-1]:
                return None
            return [relax.const(np.ascontiguousarray(np.take(arr, range(lo, hi), axis=at)), str(arr.dtype))
                    for lo, hi in zip([0] + offsets[:-1], offsets)]
        concat = self._concat(arg)
        if concat is None or (concat[1], concat[2]) != (axis, offsets):
            return None
        return concat[0]

    def _move(self, call, args, out):
        """``call`` (with rebuilt ``args``, output shape ``out``) applied to each part of the
        concatenation it reads, or None."""
        name = op_name(call)
        if name == "relax.multiply":  # x * sigmoid(x): SiLU, one unary op to move
            for x, gate in (args, args[::-1]):
                bound = self.builder_.lookup_binding(gate) if isinstance(gate, relax.Var) else None
                if op_name(bound) == "relax.sigmoid" and bound.args[0].same_as(x) and self._concat(x):
                    return self._move(relax.op.nn.silu(x), [x], out)
        tensors = [i for i, a in enumerate(args) if isinstance(getattr(a, "ty", None), relax.TensorType)]
        if name not in _UNARY | _BINARY or (name in _UNARY and tensors != [0]):
            return None
        first = next((i for i in tensors if not isinstance(args[i], Constant)), None)
        concat = self._concat(args[first]) if first is not None else None
        if concat is None or out is None or static_shape(args[first]) != out:
            return None  # a concatenation broadcast to a larger shape stays whole
        parts, axis, offsets = concat
        per_arg = {i: self._slices(args[i], len(out), axis, offsets) for i in tensors}
        if any(v is None for v in per_arg.values()):
            return None
        moved = [self.builder_.emit(relax.Call(call.op, [per_arg[i][k] if i in per_arg else a
                                                         for i, a in enumerate(args)], call.attrs))
                 for k in range(len(parts))]
        self.moved += 1
        return relax.op.concat(moved, axis)

    def visit_call_(self, call):
        args = [self.visit_expr(a) for a in call.args]
        if op_name(call) == "relax.split" and (concat := self._concat(args[0])) is not None:
            parts, axis, offsets = concat
            sections = call.attrs.indices_or_sections
            n = len(static_shape(args[0]) or [])
            if int(call.attrs.axis) % max(n, 1) == axis and not isinstance(sections, tvm.tirx.IntImm) and \
                    [int(i) for i in sections] == [int(o) for o in offsets[:-1]]:
                self.moved += 1
                return relax.Tuple(parts)
        moved = self._move(call, args, static_shape(call))
        return moved if moved is not None else relax.Call(call.op, args, call.attrs, call.ty_args)


@relax.transform.function_pass(opt_level=0, name="mobilec.MoveThroughConcat")
class MoveThroughConcat:
    def transform_function(self, func, mod, ctx):
        if not isinstance(func, relax.Function):
            return func
        mover = _Mover(mod)
        new = mover.visit_expr(func)
        return relax.analysis.remove_all_unused(new) if mover.moved else func
