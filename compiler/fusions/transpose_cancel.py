"""Cancel the transpose pairs NHWC exporters (tf2onnx, Keras) leave around every convolution.

  T_q(T_p(x))              -> x            if q∘p is the identity, else T_{q∘p}(x)
  T_id(x)                  -> x
  f(T_p(x))                -> T_p(f(x))    f elementwise unary (relu, clip, sigmoid, ..., and a
                                           per-tensor quantize / dequantize)
  r(T_p(x), axes)          -> T_p(r(x, p[axes]))  r a reduction keeping its dims (the SE pooling)
  g(T_p(x), c)             -> T_p(g(x, c')) g elementwise binary, c a constant (c' = c permuted back)
  g(T_p(a), T_p(b))        -> T_p(g(a, b))
  g(a, T_p(b))             -> T_p(g(T_p^-1(a), b))   a a graph input whose T_p^-1 exists already
Sinking runs to a fixed point, so the transposes around a chain of elementwise ops meet and cancel.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from mobilec.compiler.fusions.base import const_array

_UNARY = ("nn.relu", "clip", "sigmoid", "tanh", "nn.silu", "exp", "negative", "round", "floor", "astype")
_PER_TENSOR = ("quantize", "dequantize")  # unary when scale and zero point are single values
_REDUCE = ("mean", "sum")  # with keepdims: the permutation carries over, the axes map
_BINARY = ("add", "subtract", "multiply", "divide", "minimum", "maximum")
MAX_ROUNDS = 64


def _perm(call: relax.Call, rank: int) -> list[int]:
    axes = call.attrs.axes
    return [int(a) for a in axes] if axes is not None else list(range(rank))[::-1]


def _rank(expr) -> int:
    return expr.ty.ndim


def _T(x, perm):
    return relax.op.permute_dims(x, perm)


def _inverse(perm):
    return [int(i) for i in np.argsort(perm)]


def _constant_through(c: Constant, perm: list[int], rank: int) -> Constant | None:
    arr = const_array(c)
    if arr.ndim > rank:
        return None
    full = arr.reshape((1,) * (rank - arr.ndim) + arr.shape)
    return relax.const(np.ascontiguousarray(np.transpose(full, _inverse(perm))), str(arr.dtype))


def _input_transposes(func: relax.Function) -> list:
    """(graph input, permutation) of every transpose of a graph input in ``func``."""
    found = []

    def visit(expr):
        if (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.permute_dims"
                and _is_param(expr.args[0])):
            found.append((expr.args[0], _perm(expr, _rank(expr.args[0]))))

    relax.analysis.post_order_visit(func.body, visit)
    return found


def _is_param(expr) -> bool:
    """A graph input (a function parameter: a Var that no dataflow binding defines). Transposing
    it into the layout of the other operand costs the same one transpose as transposing the
    result back, and the convolutions reading it already carry that transpose (deduplicated by
    common-subexpression elimination), so a residual add on the input still fuses."""
    return isinstance(expr, relax.Var) and not isinstance(expr, relax.DataflowVar)


def _rules(transposed=()):
    """(pattern, rewriter) pairs; rewriters read matched sub-expressions from ``m`` (call.args
    hold the bound variables, not the values)."""
    T = is_op("relax.permute_dims")
    x, y = wildcard(), wildcard()
    inner = T(x)
    outer = T(inner)

    def fold_pair(call, m):  # T_q(T_p(x)) -> x | T_{q∘p}(x)
        rank = _rank(m[x])
        p, q = _perm(m[inner], rank), _perm(m[outer], rank)
        composed = [p[i] for i in q]
        return m[x] if composed == list(range(rank)) else _T(m[x], composed)

    yield outer, fold_pair

    def drop_identity(call, m):  # T_id(x) -> x (left where a pair composed to the identity)
        return m[x] if _perm(call, _rank(m[x])) == list(range(_rank(m[x]))) else call

    yield inner, drop_identity

    for name in _UNARY:
        t = T(x)
        pat = is_op(f"relax.{name}")(t, varg_default_wildcard=True)

        def sink_unary(call, m, t=t):  # f(T_p(x)) -> T_p(f(x))
            return _T(relax.Call(call.op, [m[x]] + list(call.args[1:]), call.attrs), _perm(m[t], _rank(m[x])))

        yield pat, sink_unary

    for name in _PER_TENSOR:
        t = T(x)
        pat = is_op(f"relax.{name}")(t, is_const(), is_const())

        def sink_per_tensor(call, m, t=t):  # q(T_p(x), s, z) -> T_p(q(x, s, z)) for scalar s and z
            if any(const_array(a).size != 1 for a in call.args[1:]):
                return call  # per channel: the axis moves with the transpose; left alone
            return _T(relax.Call(call.op, [m[x]] + list(call.args[1:]), call.attrs), _perm(m[t], _rank(m[x])))

        yield pat, sink_per_tensor

    for name in _REDUCE:
        t = T(x)

        def sink_reduce(call, m, t=t, name=name):  # r(T_p(x), axes) -> T_p(r(x, p[axes])), dims kept
            rank = _rank(m[x])
            if not call.attrs.keepdims or call.attrs.axis is None:
                return call
            perm = _perm(m[t], rank)
            axes = sorted(perm[int(a) % rank] for a in call.attrs.axis)
            return _T(getattr(relax.op, name)(m[x], axes, keepdims=True), perm)

        yield is_op(f"relax.{name}")(t), sink_reduce

    for name in _BINARY:
        t, c = T(x), is_const()
        pat = is_op(f"relax.{name}")(t, c)

        def sink_const(call, m, t=t, c=c):  # g(T_p(x), c) -> T_p(g(x, c'))
            perm = _perm(m[t], _rank(m[x]))
            c2 = _constant_through(m[c], perm, _rank(m[x]))
            if c2 is None:
                return call
            first_is_t = not isinstance(call.args[0], Constant)
            args = [m[x], c2] if first_is_t else [c2, m[x]]
            return _T(relax.Call(call.op, args, call.attrs), perm)

        yield pat, sink_const

        ta, tb = T(x), T(y)
        pat2 = is_op(f"relax.{name}")(ta, tb)

        def sink_both(call, m, ta=ta, tb=tb):  # g(T_p(a), T_p(b)) -> T_p(g(a, b))
            pa, pb = _perm(m[ta], _rank(m[x])), _perm(m[tb], _rank(m[y]))
            if pa != pb:
                return call
            return _T(relax.Call(call.op, [m[x], m[y]], call.attrs), pa)

        yield pat2, sink_both

        a, tb2 = wildcard(), T(y)

        def sink_past_input(call, m, a=a, tb=tb2):  # g(a, T_p(b)) -> T_p(g(T_p^-1(a), b)), a an input
            if not _is_param(m[a]) or _rank(m[a]) != _rank(m[y]):
                return call
            perm = _perm(m[tb], _rank(m[y]))
            if not any(v.same_as(m[a]) and p == _inverse(perm) for v, p in transposed):
                return call  # only where that transpose of the input exists already: then it is free
            args = [_T(m[a], _inverse(perm)), m[y]]
            return _T(relax.Call(call.op, args if call.args[0].same_as(m[a]) else args[::-1], call.attrs), perm)

        yield is_op(f"relax.{name}")(a, tb2), sink_past_input
        yield is_op(f"relax.{name}")(tb2, a), sink_past_input


@relax.transform.function_pass(opt_level=0, name="mobilec.CancelTransposes")
class CancelTransposes:
    def transform_function(self, func, mod, ctx):
        if not isinstance(func, relax.Function):
            return func
        changed = 0

        def counted(rewriter):
            def rewrite(call, matches):
                nonlocal changed
                new = rewriter(call, matches)
                changed += new is not call
                return new
            return rewrite

        for _ in range(MAX_ROUNDS):
            changed = 0
            rules = [(p, counted(r)) for p, r in _rules(_input_transposes(func))]
            for pattern, rewriter in rules:
                func = rewrite_call(pattern, rewriter, func)
            if not changed:
                break
        return func
