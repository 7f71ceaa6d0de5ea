"""A Relax function's bindings and who reads each bound value: what the graph passes that look at
a value's readers (pad_channels.py, quantized.py) walk."""

from __future__ import annotations

import tvm
from tvm import relax


def numel(shape) -> int | None:
    """Elements of a shape of constant dimensions, else None."""
    n = 1
    for d in shape:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        n *= int(d)
    return n


def static_shape(expr) -> list[int] | None:
    """The shape of a tensor-typed expression whose dimensions are all constants, else None."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return [int(d) for d in ty.shape] if numel(ty.shape) is not None else None
    except (TypeError, AttributeError, ValueError):
        return None


def op_name(call) -> str:
    return call.op.name if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) else ""


class Bindings:
    def __init__(self, func: relax.Function):
        self.value: dict = {}  # var -> the call bound to it
        self.users: dict = {}  # var -> [var whose call reads it, or None: read by something else]

        def read_elsewhere(expr):
            if isinstance(expr, relax.Var):
                self.users.setdefault(expr, []).append(None)

        for block in func.body.blocks:
            for b in block.bindings:
                if not isinstance(b, relax.VarBinding):
                    continue
                self.value[b.var] = b.value
                reads = b.value.args if isinstance(b.value, relax.Call) else []
                for arg in reads:
                    if isinstance(arg, relax.Var):
                        self.users.setdefault(arg, []).append(b.var if op_name(b.value) else None)
                    else:  # inside an argument, e.g. concat's tuple: read, never rewritten
                        relax.analysis.post_order_visit(arg, read_elsewhere)
                if not isinstance(b.value, relax.Call):  # tuples, aliases: read, never rewritten
                    relax.analysis.post_order_visit(b.value, read_elsewhere)
        relax.analysis.post_order_visit(func.body.body, read_elsewhere)

    def only_reader(self, var, name: str):
        """The var bound to the one call that reads ``var``, when there is one and it is the op
        ``relax.<name>``; else None."""
        users = self.users.get(var, [])
        return users[0] if len(users) == 1 and users[0] is not None and \
            op_name(self.value[users[0]]) == f"relax.{name}" else None
