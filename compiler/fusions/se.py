"""Squeeze-and-excite (paper sec. 5.3): x * gate(FC2(ReLU(FC1(mean(x))))) as one kernel.

  mean(x, spatial)                 # GlobalAveragePool / ReduceMean
  -> 1x1 conv | [reshape] matmul   # FC1 (+ bias), then ReLU, ReLU6, h-swish (FBNetV3) or SiLU (EfficientNet)
  -> 1x1 conv | matmul [reshape]   # FC2 (+ bias)
  -> h-sigmoid (any form) | sigmoid
  -> x * gate
  [-> QuantizeLinear]              # a quantised model's SE block (its FCs float, mobilec quantize)
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tvm.relax.dpl import DFPattern, is_const, wildcard

from mobilec.compiler.fusions import hsigmoid, hswish, silu
from mobilec.compiler.fusions.base import Rule, hswish_ref, numeric_check, op, optional_bias, relu6


def _maybe_reshape(y: DFPattern) -> DFPattern:
    # permute_dims: the NHWC convs' [1, 1, 1, C] gate moved back to an NCHW map (layout conversion)
    return (y | op("reshape", y, wildcard()) | op("squeeze", y) | op("expand_dims", y)
            | op("permute_dims", y))


def _fc(y: DFPattern) -> DFPattern:
    return optional_bias(op("nn.conv2d", y | op("permute_dims", y), is_const())
                         | op("matmul", _maybe_reshape(y), is_const()))


_x = wildcard()
_mean = op("mean", _x)
_fc1 = _fc(_mean)
ACTIVATIONS = {"ReLU": lambda v: np.maximum(v, 0), "ReLU6": lambda v: np.clip(v, 0, 6), "h-swish": hswish_ref,
               "SiLU": lambda v: v / (1 + np.exp(-v))}  # what the matched chain between the FCs must compute
_act = op("nn.relu", _fc1) | silu.pattern(_fc1) | hswish.pattern(_fc1) | relu6(_fc1)
_fc2 = _maybe_reshape(_fc(_act))  # the reshape back to NCHW may come here...
_hsig = hsigmoid.pattern(_fc2)
_gate = _hsig | op("sigmoid", _fc2)                        # ... or after the gate
_root = op("multiply", _x, _maybe_reshape(_gate))


def check(ctx) -> Optional[str]:
    a = ctx.annotated_expr
    mean, x = a["mean"], a["x"]
    rank = x.ty.ndim
    axes = sorted(int(v) % rank for v in mean.attrs.axis) if mean.attrs.axis is not None else list(range(rank))
    spatial = ([2, 3], [1, 2])  # NCHW, NHWC
    if rank != 4 or axes not in spatial:
        return f"squeeze-and-excite needs a global pool over the spatial axes of a 4-D tensor, got axes {axes}"
    refused = [numeric_check(ctx, a["act"], a["fc1"], ref, what) for what, ref in ACTIVATIONS.items()]
    if all(refused):
        return f"squeeze-and-excite's activation is none of {', '.join(ACTIVATIONS)}: {min(refused, key=len)}"
    if a["gate"].op.name == "relax.sigmoid":
        return None
    return hsigmoid.check_chain(ctx, a["gate"], a["fc2"])


RULE = Rule("mobilec.se", _root, {"x": _x, "mean": _mean, "fc1": _fc1, "act": _act, "fc2": _fc2, "gate": _gate},
            check)
# in a quantised model the gated map is quantised for the next convolution: in the same kernel
QUANTIZED_RULE = Rule("mobilec.se", op("quantize", _root, is_const(), is_const()), RULE.annotations, check)
