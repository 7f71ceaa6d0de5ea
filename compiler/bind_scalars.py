"""Scales and divisors bound into the fused kernels that read them, as compile-time constants.

Fusion (``FuseOpsByPattern(bind_constants=False)``) makes every constant of a fused kernel a
parameter, the weights and the scalars alike. A scalar that stays a parameter is a value the kernel
loads at run time, so what depends on it cannot fold at compile time. The costly case is the
division by a quantisation scale (QuantizeLinear, ``compiler/exact_division.py``): with the scale
a constant, its reciprocal and range check fold and each element costs two multiply-adds; with the
scale a parameter, the range check is a run-time choice between the multiply-adds and a division,
which the vectorised loop evaluates both sides of, so every element of an int8 model's h-swish,
squeeze-and-excite and residual outputs still paid a vector division (AArch64 ``fdiv v.4s``).

``BindScalarConstants`` substitutes into a fused kernel's body, as 0-d constants, the
one-element constant arguments that only a float32 QuantizeLinear's scale and zero point or a
float32 divisor read, and drops those parameters, where every call of the kernel passes the same
value (a divisor of shape (1, 1, 1, 1), as layout conversion leaves them, divides its 4-D dividend
as a 0-d one does). Other scalars and the weights stay parameters: legalization folds only 0-d
constants into TIR ones, TVM's FuseTIR takes no tensor constant in a kernel, and the schedules
pack the weights.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from mobilec.compiler.bindings import numel
from mobilec.compiler.fusions.base import const_array


def _primitive(func) -> bool:
    return isinstance(func, relax.Function) and bool(func.attrs) and "Primitive" in func.attrs


def _scalar(arg) -> np.ndarray | None:
    """The value of a one-element constant argument, else None."""
    if not isinstance(arg, Constant) or getattr(arg.ty, "shape", None) is None or numel(arg.ty.shape) != 1:
        return None
    return const_array(arg)


def _calls(mod: tvm.IRModule) -> dict:
    """{fused kernel's GlobalVar: [its calls]} over the module's non-primitive Relax functions."""
    found: dict = {}
    for _, func in mod.functions.items():
        if isinstance(func, relax.Function) and not _primitive(func):
            relax.analysis.post_order_visit(func, lambda e: found.setdefault(e.op, []).append(e)
                                            if isinstance(e, relax.Call) and isinstance(e.op, relax.GlobalVar) else None)
    return found


# the operands that legalization folds into TIR constants when they are 0-d constants
# (exact_division.py: the reciprocal and range check then fold too); a scalar any other op reads
# would stay a tensor constant in the kernel, which TVM's FuseTIR refuses
_FOLDED = {"relax.quantize": (1, 2), "relax.divide": (1,)}


def _scalar_ranks(func: relax.Function) -> dict:
    """{parameter: the largest rank it may have to be read as a 0-d value} for the parameters that
    only ``_FOLDED`` operands read: a divisor of rank up to its dividend's broadcasts the same as a
    0-d one; a quantisation scale or zero point must be 0-d already."""
    ranks: dict = {}
    other = set()

    def visit(e):
        if not isinstance(e, relax.Call):
            return
        slots = _FOLDED.get(e.op.name, ()) if isinstance(e.op, tvm.ir.Op) else ()
        if str(getattr(e.args[0].ty, "dtype", "")) != "float32":
            slots = ()  # exact_division.py's rules take float32 data only; others leave a tensor constant
        for i, a in enumerate(e.args):
            if i not in slots:
                other.add(a)
            else:
                rank = getattr(e.args[0].ty, "ndim", 0) if e.op.name == "relax.divide" else 0
                ranks[a] = min(ranks.get(a, rank), rank)

    relax.analysis.post_order_visit(func.body, visit)
    return {p: ranks[p] for p in func.params if p in ranks and p not in other}


def _bindable(func: relax.Function, calls: list) -> dict[int, Constant]:
    """{parameter index: its 0-d constant} for the parameters that only fold (``_scalar_ranks``) and
    that every call passes the same one-element constant."""
    out = {}
    ranks = _scalar_ranks(func)
    for i, param in enumerate(func.params):
        values = [_scalar(c.args[i]) for c in calls]
        if (param in ranks and all(v is not None and v.ndim <= ranks[param] for v in values)
                and all(v.dtype == values[0].dtype and v.tobytes() == values[0].tobytes() for v in values)):
            out[i] = relax.const(values[0].reshape(()), str(values[0].dtype))
    return out


@relax.expr_functor.mutator
class _DropArguments(relax.PyExprMutator):
    """Calls of a rebound kernel: to its new GlobalVar (the old one's type lists the dropped
    parameters), without the dropped arguments."""

    def __init__(self, mod: tvm.IRModule, renamed: dict, dropped: dict):
        super().__init__(mod)
        self.renamed = renamed  # {old GlobalVar: new GlobalVar}
        self.dropped = dropped  # {old GlobalVar: parameter indices removed}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        old = call.op
        call = super().visit_call_(call)
        if not isinstance(old, relax.GlobalVar) or old not in self.renamed:
            return call
        gone = self.dropped[old]
        return relax.Call(self.renamed[old], [a for i, a in enumerate(call.args) if i not in gone], call.attrs,
                          call.ty_args)


def BindScalarConstants() -> tvm.transform.Pass:  # noqa: N802 - named like TVM's passes
    @tvm.transform.module_pass(opt_level=0, name="mobilec.BindScalarConstants")
    def run(mod, _ctx):
        calls = _calls(mod)
        bound, dropped = {}, {}
        for gv, func in mod.functions.items():
            where = _bindable(func, calls[gv]) if _primitive(func) and gv in calls else {}
            if where:
                bound[gv] = func.bind_params({func.params[i]: c for i, c in where.items()})
                dropped[gv] = set(where)
        if not bound:
            return mod
        builder = relax.BlockBuilder(tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv not in bound},
                                                  attrs=mod.attrs))
        renamed = {gv: builder.add_func(func, gv.name_hint) for gv, func in bound.items()}
        out = builder.get()
        mutator = _DropArguments(out, renamed, dropped)
        for gv, func in list(out.functions.items()):
            if isinstance(func, relax.Function) and not _primitive(func):
                out[gv] = mutator.visit_expr(func)
        return out

    return run
