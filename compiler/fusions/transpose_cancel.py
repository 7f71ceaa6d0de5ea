"""Cancel the transpose pairs NHWC exporters (tf2onnx, Keras) leave around every convolution.

  T_q(T_p(x))              -> x            if q∘p is the identity, else T_{q∘p}(x)
  f(T_p(x))                -> T_p(f(x))    f elementwise unary (relu, clip, sigmoid, ...)
  g(T_p(x), c)             -> T_p(g(x, c')) g elementwise binary, c a constant (c' = c permuted back)
  g(T_p(a), T_p(b))        -> T_p(g(a, b))
Sinking runs to a fixed point, so the transposes around a chain of elementwise ops meet and cancel.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from mobilec.compiler.fusions.base import const_array

_UNARY = ("nn.relu", "clip", "sigmoid", "tanh", "nn.silu", "exp", "negative")
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


def _fold_pair(call, m):
    inner = call.args[0]
    x = inner.args[0]
    p, q = _perm(inner, _rank(x)), _perm(call, _rank(x))
    composed = [p[i] for i in q]
    return x if composed == list(range(len(p))) else _T(x, composed)


def _sink_unary(call, m):
    t = call.args[0]
    x = t.args[0]
    return _T(relax.Call(call.op, [x] + list(call.args[1:]), call.attrs), _perm(t, _rank(x)))


def _constant_through(c: Constant, perm: list[int], rank: int) -> Constant | None:
    arr = const_array(c)
    if arr.ndim > rank:
        return None
    full = arr.reshape((1,) * (rank - arr.ndim) + arr.shape)
    return relax.const(np.ascontiguousarray(np.transpose(full, _inverse(perm))), str(arr.dtype))


def _sink_binary(call, m):
    a, b = call.args
    ta = isinstance(a, relax.Call) and a.op.same_as(tvm.ir.Op.get("relax.permute_dims"))
    tb = isinstance(b, relax.Call) and b.op.same_as(tvm.ir.Op.get("relax.permute_dims"))
    if ta and tb:
        pa, pb = _perm(a, _rank(a.args[0])), _perm(b, _rank(b.args[0]))
        if pa != pb:
            return call
        return _T(relax.Call(call.op, [a.args[0], b.args[0]], call.attrs), pa)
    t, c = (a, b) if ta else (b, a)
    if not isinstance(c, Constant):
        return call
    x = t.args[0]
    perm = _perm(t, _rank(x))
    c2 = _constant_through(c, perm, _rank(x))
    if c2 is None:
        return call
    args = [x, c2] if ta else [c2, x]
    return _T(relax.Call(call.op, args, call.attrs), perm)


def _rules():
    t = is_op("relax.permute_dims")
    yield t(t(wildcard())), _fold_pair
    for name in _UNARY:
        yield is_op(f"relax.{name}")(t(wildcard()), varg_default_wildcard=True), _sink_unary
    for name in _BINARY:
        yield is_op(f"relax.{name}")(t(wildcard()), is_const() | t(wildcard())), _sink_binary


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

        rules = [(p, counted(r)) for p, r in _rules()]
        for _ in range(MAX_ROUNDS):
            changed = 0
            for pattern, rewriter in rules:
                func = rewrite_call(pattern, rewriter, func)
            if not changed:
                break
        return func
