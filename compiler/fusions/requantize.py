"""An integer convolution (or matrix product) and its requantisation epilogue, one kernel.

  astype(clip(round(astype(conv2d(x, W) [+ b], f32) * m) + z, lo, hi), int8|uint8)
                                      -> mobilec.conv2d_requantize
  the same with matmul(x, W)          -> mobilec.dense_requantize

The chain is the one ``compiler/quantized.py`` writes for a quantised (QDQ) convolution: int32
accumulation, int32 bias, then the float multiplier per output channel, rounding half to even,
the output zero point and the clamp to the output type (with ReLU/ReLU6 folded into the clamp).
"""

from __future__ import annotations

from typing import Callable, Optional

from tvm.relax.dpl import DFPattern, is_const, wildcard

from mobilec.compiler.fusions.base import Rule, op


def pattern(accumulator: DFPattern) -> DFPattern:
    acc = accumulator | op("add", accumulator, is_const())
    scaled = op("multiply", op("astype", acc) | acc, is_const())
    return op("astype", op("clip", op("add", op("round", scaled), is_const()), wildcard(), wildcard()))


def _integer_check(ctx) -> Optional[str]:
    core = ctx.annotated_expr["core"]
    if str(core.ty.dtype) not in ("int32", "float32"):
        return f"accumulates in {core.ty.dtype}, not int32 or float32"
    return None


def _rule(kind: str, producer: Callable[[DFPattern], DFPattern]) -> Rule:
    core = producer(wildcard())
    return Rule(f"mobilec.{kind}_requantize", pattern(core), {"core": core}, _integer_check)


RULES = [_rule("conv2d", lambda x: op("nn.conv2d", x, is_const())),
         _rule("dense", lambda x: op("matmul", x, is_const()))]
