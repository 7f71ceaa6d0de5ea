"""What every fusion file shares: pattern building blocks, a numeric check of elementwise chains,
and the rule type handed to ``FuseOpsByPattern``.

A rule's check returns ``None`` to accept a match or a sentence saying why it refused; refusals
are near misses and land in the fusion report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from tvm import relax
from tvm.ir.expr import Constant  # TVM 0.27: tensor constants (GenericConst) and IntImm/FloatImm
from tvm.relax.dpl import DFPattern, is_const, is_op, wildcard
from tvm.relax.transform import FusionPattern, PatternCheckContext

Check = Callable[[PatternCheckContext], Optional[str]]


@dataclass(frozen=True)
class Rule:
    """One named fusion: the composite function name, its pattern, named sub-patterns, a check."""

    name: str                      # becomes the "Composite" attribute, e.g. "mobilec.hswish"
    pattern: DFPattern
    annotations: dict = field(default_factory=dict)
    check: Optional[Check] = None  # None: always accept
    near_misses: bool = True  # False: the check states a choice between rules, not a near miss; unreported

    def fusion_pattern(self, on_refusal: Callable[[str, PatternCheckContext, str], None]) -> FusionPattern:
        def check(ctx: PatternCheckContext) -> bool:
            if escaping_intermediate(ctx):
                return False  # a legality limit, not a near miss: not reported
            reason = self.check(ctx) if self.check else None
            if reason is not None and self.near_misses:
                on_refusal(self.name, ctx, reason)
            return reason is None

        return FusionPattern(self.name, self.pattern, self.annotations, check)


def escaping_intermediate(ctx: PatternCheckContext) -> Optional[str]:
    """A fused function returns one value: an intermediate used outside it cannot be fused."""
    inside = set(ctx.matched_bindings.keys())
    root = ctx.value_to_bound_var.get(ctx.matched_expr)
    for var in inside:
        if var.same_as(root):
            continue
        outside = [u for u in ctx.var_usages.get(var, []) if u not in inside]
        if outside:
            return f"intermediate {var.name} is also used by {outside[0].name} outside the pattern"
    return None


def chain_rule(name: str, make_pattern: Callable[[DFPattern], DFPattern],
               check_chain: Callable) -> Rule:
    """A standalone activation rule: ``make_pattern(x)`` anywhere, accepted if ``check_chain`` is."""
    x = wildcard()
    root = make_pattern(x)
    return Rule(name, root, {"root": root, "x": x},
                lambda ctx: check_chain(ctx, ctx.annotated_expr["root"], ctx.annotated_expr["x"]))


# ---- pattern building blocks (every form exporters write) -----------------------------------

def op(name: str, *args: DFPattern) -> DFPattern:
    return is_op(f"relax.{name}")(*args)


def relu6(y: DFPattern) -> DFPattern:
    """clip(y, 0, 6) | min(max(y, 0), 6) | max(min(y, 6), 0) | min(relu(y), 6)."""
    return (op("clip", y, wildcard(), wildcard())
            | op("minimum", op("maximum", y, is_const()), is_const())
            | op("maximum", op("minimum", y, is_const()), is_const())
            | op("minimum", op("nn.relu", y), is_const()))


def scaled(z: DFPattern) -> DFPattern:
    """z / c | z * c (exporters write Div by 6 or Mul by 1/6)."""
    return op("divide", z, is_const()) | op("multiply", z, is_const())


def plus_const(y: DFPattern) -> DFPattern:
    return op("add", y, is_const())


def optional_bias(y: DFPattern) -> DFPattern:
    return y | op("add", y, is_const())


# ---- numeric check of a matched elementwise chain -------------------------------------------

SAMPLES = np.linspace(-8.0, 8.0, 65, dtype=np.float64)  # covers both knees of h-swish/h-sigmoid

_UNARY = {"relax.nn.relu": lambda a: np.maximum(a, 0), "relax.sigmoid": lambda a: 1 / (1 + np.exp(-a)),
          "relax.nn.silu": lambda a: a / (1 + np.exp(-a))}
_BINARY = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
           "relax.divide": np.divide, "relax.minimum": np.minimum, "relax.maximum": np.maximum}


class NotElementwise(Exception):
    pass


def const_array(expr) -> np.ndarray:
    value = expr.value
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def one_value(expr) -> Optional[float]:
    """The value of a one-element constant (a quantisation scale or zero point), else None."""
    if not isinstance(expr, Constant):
        return None
    arr = const_array(expr)
    return arr.reshape(-1)[0].item() if arr.size == 1 else None


def _scalar(expr) -> float:
    if not isinstance(expr, Constant):
        raise NotElementwise(f"{type(expr).__name__} is not a constant")
    arr = const_array(expr)
    if arr.size != 1:
        raise NotElementwise(f"constant of shape {arr.shape} is not a scalar")
    return float(arr.reshape(()))


def is_bound_to(ctx: PatternCheckContext, x) -> Callable:
    """Matches ``x`` itself or the variable it is bound to (the matcher hands out either)."""
    var = ctx.value_to_bound_var.get(x) if not isinstance(x, relax.Var) else None
    return lambda e: e.same_as(x) or (var is not None and e.same_as(var))


def evaluate(ctx: PatternCheckContext, root, x, samples: np.ndarray = SAMPLES) -> np.ndarray:
    """Evaluate the matched scalar chain from input ``x`` to ``root`` at ``samples``."""
    bindings = ctx.matched_bindings
    is_input = is_bound_to(ctx, x)

    def ev(e):
        if is_input(e):
            return samples
        if isinstance(e, relax.Var) and e in bindings:
            return ev(bindings[e])
        if isinstance(e, relax.Call):
            name = e.op.name
            if name == "relax.clip":
                return np.clip(ev(e.args[0]), _scalar(e.args[1]), _scalar(e.args[2]))
            if name in _UNARY:
                return _UNARY[name](ev(e.args[0]))
            if name in _BINARY:
                return _BINARY[name](*(_scalar(a) if isinstance(a, Constant) else ev(a) for a in e.args))
            raise NotElementwise(f"unexpected op {name}")
        return _scalar(e)

    return ev(root)


def hswish_ref(x):
    return x * np.clip(x + 3, 0, 6) / 6  # x * ReLU6(x + 3) / 6


def hsigmoid_ref(x):
    return np.clip(x + 3, 0, 6) / 6  # ReLU6(x + 3) / 6


def constants_in(ctx: PatternCheckContext, root, x) -> list[float]:
    """The scalar constants of the matched chain, for refusal messages."""
    out, bindings = [], ctx.matched_bindings
    is_input = is_bound_to(ctx, x)

    def walk(e):
        if is_input(e):
            return
        if isinstance(e, relax.Var) and e in bindings:
            walk(bindings[e])
        elif isinstance(e, relax.Call):
            for a in e.args:
                walk(a)
        else:
            try:
                out.append(round(_scalar(e), 6))
            except NotElementwise:
                pass

    walk(root)
    return list(dict.fromkeys(out))


def numeric_check(ctx: PatternCheckContext, root, x, ref: Callable, what: str) -> Optional[str]:
    """Accept a matched chain only if it computes ``ref`` exactly (to float32 rounding)."""
    try:
        got = evaluate(ctx, root, x)
    except NotElementwise as e:
        return f"{what}: {e}"
    want = ref(SAMPLES)
    bad = np.flatnonzero(~np.isclose(got, want, rtol=1e-5, atol=1e-6))
    if bad.size:
        i = bad[0]
        return (f"has the shape of {what} but computes f({SAMPLES[i]:g}) = {got[i]:.4g} where {what} gives "
                f"{want[i]:.4g} (constants {constants_in(ctx, root, x)})")
    return None
