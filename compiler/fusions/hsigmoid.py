"""h-sigmoid: ReLU6(x + 3) / 6, in every form exporters write it.

  clip(x + 3, 0, 6) / 6          # Div, or Mul by 1/6; Clip, Min/Max or Relu+Min
  clip(x * (1/6) + 0.5, 0, 1)    # ONNX HardSigmoid as TVM's importer decomposes it
"""

from __future__ import annotations

from tvm.relax.dpl import DFPattern, is_const, wildcard

from mobilec.compiler.fusions.base import chain_rule, hsigmoid_ref, numeric_check, op, plus_const, relu6, scaled


def pattern(x: DFPattern) -> DFPattern:
    onnx_hardsigmoid = op("clip", plus_const(op("multiply", x, is_const())), wildcard(), wildcard())
    return scaled(relu6(plus_const(x))) | onnx_hardsigmoid


def check_chain(ctx, root, x):
    return numeric_check(ctx, root, x, hsigmoid_ref, "h-sigmoid")


RULE = chain_rule("mobilec.hsigmoid", pattern, check_chain)
