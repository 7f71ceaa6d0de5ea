"""Transcendental activations as vectorisable polynomials: exp, sigmoid (SiLU's and the SE gate's),
tanh, erf (GELU) and softmax's exp.

TVM lowers ``exp``, ``tanh`` and ``erf`` to LLVM's intrinsics, which LLVM turns into one call of
libm per lane: a vector of 16 sigmoids is 16 calls of ``expf``, and EfficientNet's SiLU after every
convolution costs more than the convolution. TOPI's ``fast_exp`` (range reduction to 2^n * e^r, a
degree-5 polynomial for e^r, relative error about 1e-7 over the float range, inputs clamped to
[-88.38, 88.38]), ``fast_tanh`` (a rational approximation, about 1e-7 absolute) and ``fast_erf`` are
plain arithmetic, vectorised with the rest of the kernel, and fused as epilogues like h-swish is.
These rules replace TVM's own for the ops below when they are legalised; ``LEGALIZE`` goes to
``LegalizeOps`` beside the other custom rules (pipeline.py)."""

from __future__ import annotations

from tvm import relax, te, topi, tirx


def _fast(op):
    """A legalisation of a float32 unary op through ``op``; other dtypes keep TVM's rule."""

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if call.args[0].ty.dtype != "float32":
            return _default(call)(bb, call)
        return bb.call_te(op, call.args[0], primfunc_name_hint=call.op.name.split(".")[-1])

    return legalize


def _default(call: relax.Call):
    from tvm.ir import Op
    return Op.get(call.op.name).get_attr("FLegalize")


def sigmoid(x: te.Tensor) -> te.Tensor:
    """1 / (1 + e^-x): 0 for x below -88.38 (e^88.38 is float32's largest), 1 above."""
    e = topi.fast_exp(topi.negative(x))
    return te.compute(x.shape, lambda *i: tirx.const(1.0, "float32") / (tirx.const(1.0, "float32") + e(*i)),
                      name="sigmoid", tag="elemwise")


def silu(x: te.Tensor) -> te.Tensor:
    s = sigmoid(x)
    return te.compute(x.shape, lambda *i: x(*i) * s(*i), name="silu", tag="elemwise")


def gelu(x: te.Tensor) -> te.Tensor:
    """x * (1 + erf(x / sqrt 2)) / 2, with ``fast_erf``."""
    erf = topi.fast_erf(topi.multiply(x, tirx.const(0.5 ** 0.5, "float32")))
    half = tirx.const(0.5, "float32")
    return te.compute(x.shape, lambda *i: x(*i) * (half + erf(*i) * half), name="gelu", tag="elemwise")


def softmax(x: te.Tensor, axis: int) -> te.Tensor:
    """e^(x - max) / sum e^(x - max) along ``axis``, with ``fast_exp``."""
    axis = axis % len(x.shape)
    top = topi.max(x, axis=axis, keepdims=True)
    e = topi.fast_exp(topi.subtract(x, top))
    return topi.divide(e, topi.sum(e, axis=axis, keepdims=True))


def _softmax(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    if call.args[0].ty.dtype != "float32":
        return _default(call)(bb, call)
    return bb.call_te(softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax")


LEGALIZE = {
    "relax.exp": _fast(topi.fast_exp),
    "relax.tanh": _fast(topi.fast_tanh),
    "relax.erf": _fast(topi.fast_erf),
    "relax.sigmoid": _fast(sigmoid),
    "relax.nn.silu": _fast(silu),
    "relax.nn.gelu": _fast(gelu),
    "relax.nn.softmax": _softmax,
}
