"""SiLU / swish: x * sigmoid(x) (EfficientNet, MixNet, EfficientNetV2), in the forms exporters write.

  x * Sigmoid(x) | Sigmoid(x) * x   # PyTorch's TorchScript exporter, tf2onnx
  nn.silu(x)                        # an importer that kept the op whole
The sigmoid is legalised as a polynomial (fast_math.py), so the whole activation is a vectorised
epilogue of the convolution before it.
"""

from __future__ import annotations

from tvm.relax.dpl import DFPattern

from mobilec.compiler.fusions.base import chain_rule, op


def pattern(x: DFPattern) -> DFPattern:
    gate = op("sigmoid", x)
    return op("multiply", x, gate) | op("multiply", gate, x) | op("nn.silu", x)


RULE = chain_rule("mobilec.silu", pattern, lambda ctx, root, x: None)  # the pattern is exact: nothing to check
