"""mobilec's fusion rules, one per file, in priority order (earlier rules claim nodes first).

SE comes first so its h-sigmoid gate is fused with the pool and FCs instead of standing alone;
conv/dense epilogues come before the standalone activations so h-swish lands in the conv kernel;
an integer convolution's requantisation comes before the float epilogues, which would take its bias.
"""

from mobilec.compiler.fusions import conv_act, hsigmoid, hswish, requantize, se, silu
from mobilec.compiler.fusions.transpose_cancel import CancelTransposes

RULES = [se.QUANTIZED_RULE, se.RULE, *requantize.RULES, *conv_act.RULES, hswish.RULE, hsigmoid.RULE, silu.RULE]

__all__ = ["RULES", "CancelTransposes"]
