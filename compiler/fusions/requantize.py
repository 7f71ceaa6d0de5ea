"""An integer convolution (or matrix product), its requantisation and what the quantised model
computes in float right after it, one kernel.

  conv2d(x, W) [+ b]                                               the accumulation (int32, or
                                                                   float32 where that is exact)
  astype(clip(round([astype] acc * m) + z, lo, hi), int8|uint8)    -> mobilec.conv2d_requantize
    (or the clamped float32 itself, less the reader's zero point or not, where a float-exact
    kernel is its only reader: compiler/quantized.py)
  ... then [quantize](h-swish(dequantize(.)))                      -> mobilec.conv2d_requantize_hswish
  ... then quantize(dequantize(.) + dequantize(shortcut))          -> mobilec.conv2d_requantize_residual
  the same with matmul(x, W)                                       -> mobilec.dense_requantize[_...]

The chain is the one ``compiler/quantized.py`` writes for a quantised (QDQ) convolution: the
accumulation, the int32 bias, then the float multiplier per
output channel, rounding half to even, the output zero point and the clamp to the output type
(ReLU/ReLU6 folded into the clamp). A spatial convolution (depthwise, stem) also takes in its
input's cast and zero point, converted once per tile as it stages the padded input; a 1x1 one
leaves them outside, where they are not redone for every tile of output channels. The float h-swish or residual add of a QDQ graph, between a
DequantizeLinear and a QuantizeLinear, joins the kernel as its epilogue, as it does in fp32.
"""

from __future__ import annotations

from typing import Callable, Optional

from tvm.relax.dpl import DFPattern, is_const, wildcard

from mobilec.compiler.fusions import hswish
from mobilec.compiler.fusions.base import Rule, op


def _dq(x: DFPattern) -> DFPattern:
    return op("dequantize", x, is_const(), is_const())


def _q(x: DFPattern) -> DFPattern:
    return op("quantize", x, is_const(), is_const())


def _clamped(scaled: DFPattern) -> DFPattern:
    return op("clip", op("add", op("round", scaled), is_const()), wildcard(), wildcard())


def _centred(scaled: DFPattern) -> DFPattern:
    """The same less its zero point: clip(round(x), lo - zp, hi - zp) (compiler/cancel_zero_points.py)."""
    return op("clip", op("round", scaled), wildcard(), wildcard())


def _stored(scaled: DFPattern, eight_bit: DFPattern) -> list[DFPattern]:
    """The ways a requantised value leaves the kernel: as 8 bits, or as the same integers in float32
    (minus the reader's zero point or not) for a float kernel that reads it (compiler/quantized.py)."""
    clamped = _clamped(scaled)
    return [eight_bit, _centred(scaled), op("subtract", clamped, is_const()), clamped]


def _quantized(x: DFPattern) -> list[DFPattern]:
    """QuantizeLinear of x, or its formula in float32: clip(round(x / scale) + zero point)."""
    return _stored(op("divide", x, is_const()), _q(x))


def _scaled(core: DFPattern) -> DFPattern:
    """The accumulation (plus its bias) times the requantisation multiplier."""
    acc = core | op("add", core, is_const())
    return op("multiply", op("astype", acc) | acc, is_const())


def _integer_check(ctx) -> Optional[str]:
    core = ctx.annotated_expr["core"]
    if str(core.ty.dtype) not in ("int32", "float32"):
        return f"accumulates in {core.ty.dtype}, not int32 or float32"
    return None


def _padded_check(ctx) -> Optional[str]:
    """The input's cast joins a kernel that stages its padded input once per tile (a k x k window);
    a 1x1 kernel would redo it for every tile of output channels (measured 2x slower)."""
    weight = ctx.annotated_expr["core"].args[1]
    if [int(d) for d in weight.ty.shape][:2] == [1, 1]:
        return "a 1x1 convolution converts its input outside the kernel"
    return _integer_check(ctx)


def _rules(kind: str, producer: Callable[[DFPattern], DFPattern], cast_input: bool = False) -> list[Rule]:
    x = wildcard()
    core = producer(op("subtract", op("astype", x), is_const()) | op("astype", x) if cast_input else x)
    scaled = _scaled(core)
    r = op("astype", _clamped(scaled) | _centred(scaled))  # the latter: a zero point of 0
    dq = _dq(r) | op("multiply", _centred(scaled), is_const())  # dequantised, or its cancelled form
    act = hswish.pattern(dq)
    shortcut = _dq(wildcard())
    named = {"core": core, "dq": dq}
    check = _padded_check if cast_input else _integer_check
    # Both operands of a residual add may be ours; the matcher takes the left one first, and the
    # mirrored rule catches the case where the left one's output is also read elsewhere.
    residuals = [Rule(f"mobilec.{kind}_requantize_residual", out, named, check, not cast_input)
                 for add in (op("add", dq, shortcut), op("add", shortcut, dq)) for out in _quantized(add)]
    def hswish_check(ctx):
        return check(ctx) or hswish.check_chain(ctx, ctx.annotated_expr["act"], ctx.annotated_expr["dq"])

    # h-swish requantised for the next convolution, or left float for a squeeze-and-excite block
    return [*(Rule(f"mobilec.{kind}_requantize_hswish", out, named | {"act": act}, hswish_check, not cast_input)
              for out in _quantized(act) + [act]),
            *residuals,
            *(Rule(f"mobilec.{kind}_requantize", out, {"core": core}, check, not cast_input)
              for out in [dq] + _stored(scaled, r))]  # the dequantised value first: it ends later


def _conv(x: DFPattern) -> DFPattern:
    return op("nn.conv2d", x, is_const())


# spatial convolutions (depthwise, stem) first: they take their input's cast in
RULES = (_rules("conv2d", _conv, cast_input=True) + _rules("conv2d", _conv)
         + _rules("dense", lambda x: op("matmul", x, is_const())))
