"""h-swish: x * ReLU6(x + 3) / 6 (paper eq. 2), in every form exporters write it.

  x * (clip(x + 3, 0, 6) / 6)    # TVM's importer for ONNX HardSwish
  (x * clip(x + 3, 0, 6)) / 6    # torch functional x * relu6(x + 3) / 6; Div or Mul by 1/6
  x * HardSigmoid(x)             # Keras / tf2onnx
  ... with Clip, Min/Max or Relu+Min for ReLU6
The check evaluates the matched chain and accepts only what equals h-swish.
"""

from __future__ import annotations

from tvm.relax.dpl import DFPattern

from mobilec.compiler.fusions import hsigmoid
from mobilec.compiler.fusions.base import chain_rule, hswish_ref, numeric_check, op, plus_const, relu6, scaled


def pattern(x: DFPattern) -> DFPattern:
    return op("multiply", x, hsigmoid.pattern(x)) | scaled(op("multiply", x, relu6(plus_const(x))))


def check_chain(ctx, root, x):
    return numeric_check(ctx, root, x, hswish_ref, "h-swish")


RULE = chain_rule("mobilec.hswish", pattern, check_chain)
