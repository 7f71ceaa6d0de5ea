"""Division by one value as multiplications, rounded exactly as the division.

QuantizeLinear is ``round(x / scale) + zero_point``, and onnxruntime (MLAS) divides, so mobilec must
round ``x / scale`` exactly as a division does. A vector division is slow (several cycles per
vector on one port, where FMAs issue two a cycle; far slower on phone cores) and every quantised
h-swish, residual add and squeeze-and-excite output of an int8 model divides each element once. Markstein's
theorem gives the division's exact result from multiply-adds: with ``r`` the reciprocal of ``s``
rounded to nearest (one division per kernel call: loop-invariant, hoisted),

    q  = x * r             within one ulp of x / s
    e  = fma(-q, s, x)     the remainder, exact
    q' = fma(e, r, q)      = x / s rounded to nearest

provided nothing overflows or underflows: |s| and |1/s| normal (checked at run time, once: else
the division itself), a quotient past float32's range is kept infinite, and a subnormal one
(|x / s| < 2**-126) may differ in its last bit (QuantizeLinear rounds it to 0 either way).
``tests/test_exact_division.py`` checks bit equality with numpy's division on ties, near-ties and
random values for awkward divisors.

Measured: outputs unchanged (Large int8 and fp32 bit-identical). On this AVX-512 host the
whole model did not get measurably faster (its quantising kernels wait on memory), but on the
phone cores the division is the loop's bottleneck: llvm-mca of a QuantizeLinear loop, 200
iterations, Cortex-A55 42,401 -> 16,201 cycles, Cortex-A76 27,647 -> 9,838.

Used by LegalizeOps (``compiler/pipeline.py``) for relax.quantize with one scale (per tensor) and
relax.divide by a one-element float32 tensor; everything else is legalized as TVM does.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx
from tvm.relax.transform.legalize_ops import qdq

from mobilec.compiler.bindings import numel

_NORMAL_MIN = 2.0 ** -126  # the smallest normal float32
_RECIPROCAL_MAX = 2.0 ** 126  # a divisor above this has a subnormal reciprocal


def exact_quotient(x, s):
    """``x / s`` (float32 TIR expressions, ``s`` loop-invariant) without a division per element."""
    r = tirx.const(1.0, "float32") / s
    q = x * r
    e = tirx.op.fma(-q, s, x)
    magnitude = tirx.abs(s)
    normal = tirx.all(magnitude >= tirx.const(_NORMAL_MIN, "float32"),
                      magnitude <= tirx.const(_RECIPROCAL_MAX, "float32"))
    # an overflowed q (|x / s| past float32's range) stays infinite: the correction would make it NaN
    corrected = tirx.Select(tirx.abs(q) < tirx.const(float("inf"), "float32"), tirx.op.fma(e, r, q), q)
    return tirx.if_then_else(normal, corrected, x / s)


def _one(t):
    """The one element of a one-element tensor, or the scalar itself."""
    return t[(0,) * len(t.shape)] if isinstance(t, te.Tensor) else t


def _default(name: str):
    return tvm.ir.Op.get(name).get_attr("FLegalize")


def legalize_divide(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """float32 ``a / b`` with a one-element ``b``: multiply-adds; anything else as TVM does."""
    a, b = call.args
    shape = getattr(b.ty, "shape", None)
    if shape is None or numel(shape) != 1 or {str(a.ty.dtype), str(b.ty.dtype), str(call.ty.dtype)} != {"float32"}:
        return _default("relax.divide")(bb, call)

    def divide(x: te.Tensor, y):
        return te.compute(x.shape, lambda *i: exact_quotient(x[i], _one(y)), name="T_divide")

    # a constant divisor becomes a TIR constant: its reciprocal and range check fold at compile time
    return bb.call_te(divide, a, qdq._try_convert_to_scalar_const(b), primfunc_name_hint="divide")


def legalize_quantize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """relax.quantize of float32 with one scale and zero point: TVM's formula,
    ``clip(round(x / scale) + zp)``, with the quotient from multiply-adds; else TVM's own."""
    data, scale, zp = call.args
    out_dtype = str(call.attrs.out_dtype)
    if (str(data.ty.dtype) != "float32" or "int" not in out_dtype or str(scale.ty.dtype) != "float32"
            or any(getattr(t.ty, "shape", None) is None or numel(t.ty.shape) != 1 for t in (scale, zp))):
        return _default("relax.quantize")(bb, call)

    def quantize(x: te.Tensor, s, z):
        return te.compute(x.shape, lambda *i: qdq.clip_cast(te.round(exact_quotient(x[i], _one(s))) + _one(z),
                                                            out_dtype), name="quantized")

    return bb.call_te(quantize, data, qdq._try_convert_to_scalar_const(scale),
                      qdq._try_convert_to_scalar_const(zp), primfunc_name_hint="quantize")


LEGALIZE = {"relax.divide": legalize_divide, "relax.quantize": legalize_quantize}
