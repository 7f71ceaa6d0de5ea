"""Zero points that cancel: a requantised value read back less the zero point it was given.

compiler/quantized.py writes each integer kernel's requantisation as onnxruntime computes it,

    c = clip(round(t) + zp, lo, hi)        float32, then cast to 8 bits

(a zero point of 0, a ReLU's output, needs no add: it is dropped), and the op of the quantised
graph that reads it takes the zero point off again:

    dequantize(astype(c, uint8), scale, zp) = (c - zp) * scale    an h-swish, residual add or
                                                                  squeeze-and-excite input
    c - zp                                                        a float-exact depthwise reading
                                                                  its producer's float values

Both are ``clip(round(t), lo - zp, hi - zp) [* scale]``, exactly: the values are integers far
below 2**24, and a round(t) so large that adding zp would round lies outside the clamp either
way. The kernel's epilogue loses the add, the subtract and the 8-bit round trip (a float to
integer conversion, a pack, an unpack and an integer to float conversion).

Only where each value of the chain has that one reader: a requantised value also stored as 8
bits for another kernel keeps its form. Runs in phase 1, right after the integer kernels are
written; the fusion patterns (compiler/fusions/requantize.py) take both forms.
"""

from __future__ import annotations

from typing import Optional

import tvm
from tvm import relax

from mobilec.compiler.bindings import Bindings, op_name
from mobilec.compiler.fusions.base import one_value

_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def _bound(expr) -> Optional[float]:
    """A clip bound (a float or int immediate), else None."""
    return float(expr.value) if isinstance(expr, (tvm.tirx.FloatImm, tvm.tirx.IntImm)) else None


class _Chains:
    """The original function's cancelling chains: the reading call -> (round(t), lo - zp, hi - zp,
    the dequantisation's scale or None)."""

    def __init__(self, func: relax.Function):
        self.graph = Bindings(func)
        self.found: dict = {}
        for var, value in self.graph.value.items():
            if op_name(value) == "relax.dequantize":
                self._dequantize(value)
            elif op_name(value) == "relax.subtract":
                self._subtract(value)
            elif op_name(value) == "relax.clip":
                self._zero(var)

    def _read_once(self, var) -> bool:
        return len(self.graph.users.get(var, [])) == 1

    def _clamp(self, var) -> Optional[tuple]:
        """(round(t), lo, hi, zp) when ``var`` is clip(round(t) + zp, lo, hi) in float32 with an
        integer zp, the add read only by the clip."""
        clip = self.graph.value.get(var)
        if op_name(clip) != "relax.clip" or str(clip.ty.dtype) != "float32":
            return None
        add = self.graph.value.get(clip.args[0])
        if op_name(add) != "relax.add" or not self._read_once(clip.args[0]):
            return None
        rounded, zp = add.args[0], one_value(add.args[1])
        lo, hi = _bound(clip.args[1]), _bound(clip.args[2])
        if op_name(self.graph.value.get(rounded)) != "relax.round" or None in (zp, lo, hi) or zp != round(zp):
            return None
        return rounded, lo, hi, zp

    def _requantised(self, var) -> Optional[tuple]:
        """The same, the clip read once too: each value of the chain read only by the next."""
        return self._clamp(var) if self._read_once(var) else None

    def _dequantize(self, dq):
        """A requantised value that only DequantizeLinears read, all with the same scale and zero
        point (the importer gives each reader its own): one float value replaces them all."""
        g, cast = self.graph, self.graph.value.get(dq.args[0])
        if op_name(cast) != "relax.astype" or str(cast.ty.dtype) not in _RANGE:
            return
        scale, zp = one_value(dq.args[1]), one_value(dq.args[2])
        for reader in g.users.get(dq.args[0], []):
            other = g.value.get(reader)
            if op_name(other) != "relax.dequantize" or str(other.ty.dtype) != "float32" \
                    or (one_value(other.args[1]), one_value(other.args[2])) != (scale, zp):
                return
        chain = self._requantised(cast.args[0])
        if chain is None or scale is None:
            return
        rounded, lo, hi, requant_zp = chain
        low, high = _RANGE[str(cast.ty.dtype)]
        if zp == requant_zp and low <= lo <= hi <= high:
            self.found[dq] = (rounded, lo - zp, hi - zp, scale)

    def _zero(self, var):
        """clip(round(t) + 0, lo, hi), a zero point of 0 (a ReLU's output), cast to 8 bits or read
        by a convolution (the float hand-over): the add dropped. Exact in every integer it gives:
        the -0.0 it would have made +0.0 casts, rounds, sums and multiplies to the same values (a
        float model's clip, which a division might read, is left alone)."""
        g = self.graph
        readers = [g.value.get(r) for r in g.users.get(var, [])]
        if not readers or not all(op_name(r) == "relax.nn.conv2d" or op_name(r) == "relax.astype"
                                  and str(r.ty.dtype) in _RANGE for r in readers):
            return
        chain = self._clamp(var)
        if chain is not None and chain[3] == 0:
            rounded, lo, hi, _ = chain
            self.found[g.value[var]] = (rounded, lo, hi, None)

    def _subtract(self, sub):
        chain = self._requantised(sub.args[0])
        if chain is not None and one_value(sub.args[1]) == chain[3] and str(sub.ty.dtype) == "float32":
            rounded, lo, hi, zp = chain
            self.found[sub] = (rounded, lo - zp, hi - zp, None)


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod, found: dict):
        super().__init__(mod)
        self.found = found
        self.dequantized = {}  # round(t) -> its one dequantised value, for every reader

    def visit_call_(self, call):
        chain = self.found.get(call)
        if chain is None:
            return super().visit_call_(call)
        rounded, lo, hi, scale = chain
        centred = relax.op.clip(self.visit_expr(rounded), lo, hi)
        if scale is None:
            return centred
        if rounded not in self.dequantized:
            self.dequantized[rounded] = self.builder_.emit(
                relax.op.multiply(self.builder_.emit(centred), relax.const(scale, "float32")))
        return self.dequantized[rounded]


@relax.transform.function_pass(opt_level=0, name="mobilec.CancelZeroPoints")
class CancelZeroPoints:
    def transform_function(self, func, mod, ctx):
        if not isinstance(func, relax.Function):
            return func
        found = _Chains(func).found
        return relax.analysis.remove_all_unused(_Rewrite(mod, found).visit_expr(func)) if found else func
