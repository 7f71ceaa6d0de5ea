"""Convolution (or dense) + bias (or folded BN) + activation / residual, one kernel each.

  conv2d(x, W) [+ b]                  -> mobilec.conv2d_bias
  ... then relu | relu6 | h-swish | SiLU
                                      -> mobilec.conv2d_bias_{relu,relu6,hswish,silu}
  ... then + residual                 -> mobilec.conv2d_bias_residual
  matmul(x, W) [+ b] [activation]    -> mobilec.dense_bias[_act]   (the classifier)
Bias adds and folded batch norms (multiply/add by per-channel constants) are epilogues.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from tvm.relax.dpl import DFPattern, is_const, wildcard

from mobilec.compiler.fusions import hswish, silu
from mobilec.compiler.fusions.base import Rule, is_bound_to, numeric_check, op, optional_bias, relu6


def _affine(y: DFPattern) -> DFPattern:
    """[* scale] [+ shift]: bias, or batch norm decomposed for inference."""
    scaled = y | op("multiply", y, is_const())
    return optional_bias(optional_bias(scaled))  # NHWC graphs add a second per-channel bias


def _relu6_check(ctx) -> Optional[str]:
    a = ctx.annotated_expr
    return numeric_check(ctx, a["act"], a["pre"], lambda x: np.clip(x, 0, 6), "ReLU6")


def _hswish_check(ctx) -> Optional[str]:
    a = ctx.annotated_expr
    return hswish.check_chain(ctx, a["act"], a["pre"])


def _residual_check(ctx) -> Optional[str]:
    a = ctx.annotated_expr
    add, pre = a["act"], a["pre"]
    other = add.args[1] if is_bound_to(ctx, pre)(add.args[0]) else add.args[0]
    if [int(d) for d in other.ty.shape] != [int(d) for d in pre.ty.shape]:
        return f"residual shapes differ: {list(other.ty.shape)} vs {list(pre.ty.shape)}"
    return None


def _rules(kind: str, producer: Callable[[DFPattern], DFPattern]) -> list[Rule]:
    x = wildcard()
    core = producer(x)
    pre = _affine(core)
    acts = {
        "hswish": (hswish.pattern(pre), _hswish_check),
        "relu6": (relu6(pre), _relu6_check),
        "relu": (op("nn.relu", pre), None),
        "silu": (silu.pattern(pre), None),
    }
    rules = [Rule(f"mobilec.{kind}_bias_{name}", act, {"core": core, "pre": pre, "act": act}, check)
             for name, (act, check) in acts.items()]
    if kind == "conv2d":
        # Both operands of a residual add may be convolutions; the matcher tries the left one as
        # ours first, so the mirrored rule catches the case where the left one is the shortcut.
        shortcut = ~is_const()  # a constant add is a bias, not a residual
        for add in (op("add", pre, shortcut), op("add", shortcut, pre)):
            rules.append(Rule(f"mobilec.{kind}_bias_residual", add, {"core": core, "pre": pre, "act": add},
                              _residual_check))
    return rules + [Rule(f"mobilec.{kind}_bias", pre, {"core": core, "pre": pre})]


CONV_RULES = _rules("conv2d", lambda x: op("nn.conv2d", x, is_const()))
DENSE_RULES = _rules("dense", lambda x: op("matmul", x, is_const()))
RULES = CONV_RULES + DENSE_RULES
