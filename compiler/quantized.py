"""Quantised ONNX (the QDQ form) compiled as integer kernels.

A QDQ model says "this convolution is int8" by surrounding a float op with DequantizeLinear on
its inputs and QuantizeLinear on its output. ``IntegerKernels`` finds each

    QuantizeLinear( [Relu | Clip]( Conv | MatMul | Gemm ( DQ(x), DQ(W) ) [+ DQ(bias)] ) )

and replaces it with an integer kernel: (x - x_zero_point) times (W - W_zero_point) accumulated
exactly, the int32 bias added, and the requantisation epilogue onnxruntime's QLinearConv uses (MLAS):
``round_half_even(float(acc) * (x_scale * w_scale[c] / y_scale)) + y_zp``, clamped to the output
type (a Relu or ReLU6 before the QuantizeLinear is that clamp). The accumulation, per kernel:

- a 1x1 convolution or matrix product on a CPU with an integer dot-product instruction
  (``CpuPreset.int_dot``): int16 operands into int32 (AVX2 vpmaddwd), int8 ones (AArch64 sdot;
  a uint8 input read as x - 128, the shift times the weights' sums folded into the bias), or a
  uint8 input and int8 weights (AVX-512 VNNI vpdpbusd; an int8 input read as x + 128);
- else float32 where that is exact: every product and partial sum an integer below 2**24, which
  max|x - x_zp| * sum_k |w[c, k]| + |bias| < 2**24 guarantees (checked per layer);
- else int16 operands into int32.

The 8-bit data flows between kernels as uint8/int8, not float, with one exception: a value whose
only reader is a float-exact kernel (a depthwise or stem convolution reads each input 9 to 25
times) leaves its producer as the same integers in float32, so the reader does not convert bytes
at every tap (measured on Large's int8 build: 3.03 -> 2.91 ms), where that float copy fits in the
core's L2 (``CpuPreset.l2_kb``). A larger one would go to memory and back at four times the bytes:
Large's 112x112x64 expansion (3.2 MB as float) stays 8-bit on AVX-512 (1 MB L2): it and its
depthwise took 143-179 us, now 122-125 (both orders; caps of 150 and 500 KB were slower).

What cannot be integer stays float between its DequantizeLinear and QuantizeLinear, exactly as the
file says, and the fusion report lists it with the reason (16-bit activations or weights, a bias
with another scale, a non-constant weight, ...).

Runs first in phase 1: FoldConstant would otherwise turn DQ(W) into float weights.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from mobilec.compiler.bindings import Bindings, numel
from mobilec.compiler.fusions.base import const_array, one_value
from mobilec.compiler.report import FusionReport
from mobilec.targets import CpuParams, dot_form

_INT8 = ("int8", "uint8")
_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_FLOAT_EXACT = 2 ** 24  # integers below this are exact in float32


def _fits_int16_sums(w_rows: np.ndarray, dot) -> bool:
    """Widening kernels (smull) sum the products of weights k and k + group of each depth block in
    an int16 lane: with inputs within -128..127 that lane holds at most 128 x (|w_a| + |w_b|)."""
    blocks = np.abs(w_rows.astype(np.int64)).reshape(w_rows.shape[0], -1, dot.steps, dot.group)
    return w_rows.size == 0 or int(blocks.sum(axis=2).max()) * 128 <= np.iinfo(np.int16).max


def _op(call, name: str) -> bool:
    return isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name == f"relax.{name}"


def _const(expr) -> Optional[np.ndarray]:
    return const_array(expr) if isinstance(expr, Constant) else None


def _kernel(expr) -> bool:
    return _op(expr, "nn.conv2d") or _op(expr, "matmul")


def _describe(call) -> str:
    shape = "x".join(str(int(d)) if isinstance(d, tvm.tirx.IntImm) else str(d) for d in call.ty.shape) \
        if hasattr(call.ty, "shape") else "?"
    return f"{call.op.name.removeprefix('relax.')} -> {shape}"


class _Refused(Exception):
    pass


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod, report: FusionReport, dot: str, single: set, l2_bytes: int):
        super().__init__(mod)
        self.report = report
        self.dot = dot  # the CPU's integer dot-product instruction (targets.INT_DOTS; "": none)
        self.l2_bytes = l2_bytes  # the largest float32 copy of an 8-bit value worth handing over (_float_values)
        self.single = single  # 8-bit values one convolution reads, through one DequantizeLinear (_single_readers)
        self.single_now = set()  # the same, as this rewrite renamed them

    def visit_var_binding_(self, binding):
        super().visit_var_binding_(binding)
        if binding.var in self.single:
            self.single_now.add(self.visit_expr(binding.var))  # the name its readers now use

    def _binding(self, expr):
        while isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is None:
                return expr
            expr = bound
        return expr

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if _op(call, "add"):  # its own copy of a shared DequantizeLinear, so a kernel can take it in
            return relax.Call(call.op, [self._own_dequantize(a) for a in call.args], call.attrs)
        if not _op(call, "quantize"):
            return call
        try:
            return self._integer(call)
        except _Refused as e:
            kernel = self._kernel_below(call)
            if kernel is not None:
                self.report.float_quantized.append({"op": _describe(kernel), "reason": str(e)})
            return call

    def _own_dequantize(self, arg):
        bound = self._binding(arg) if isinstance(arg, relax.Var) else None
        if not _op(bound, "dequantize"):
            return arg
        return self.builder_.emit(relax.Call(bound.op, list(bound.args), bound.attrs))

    @staticmethod
    def _pointwise(kernel) -> bool:
        """A matrix product, or a 1x1 convolution of stride 1 without groups or padding."""
        if _op(kernel, "matmul"):
            return True
        a = kernel.attrs
        weight = [int(d) for d in kernel.args[1].ty.shape]
        return (a.groups == 1 and weight[2:] == [1, 1] and all(int(v) == 1 for v in a.strides)
                and all(int(v) == 0 for v in a.padding))

    def _kernel_below(self, quantize):
        v = self._binding(quantize.args[0])
        while isinstance(v, relax.Call) and (_op(v, "nn.relu") or _op(v, "clip") or _op(v, "add")):
            v = self._binding(v.args[0])
        return v if _kernel(v) else None

    def _float_values(self, xq):
        """float32(xq) computed from what its producer had before the cast, or None.

        A float kernel then reads float32 values its producer wrote, not 8-bit ones it converts
        at every tap (a depthwise reads each input 9 or 25 times). Exact: the producer's values
        are already integers in the 8-bit range, so the cast to 8 bits and back changes nothing.
        """
        if xq not in self.single_now:
            return None  # another reader needs the 8 bits: a float copy too would cost more than it saves
        shape = getattr(xq.ty, "shape", None)
        if shape is not None and 4 * (numel(shape) or 0) > self.l2_bytes:
            return None  # four times the bytes, past the cache: costs more than the conversions it saves
        bound = self._binding(xq)
        if _op(bound, "astype") and str(bound.args[0].ty.dtype) == "float32":
            return bound.args[0]  # an integer kernel's clamped requantisation
        if _op(bound, "quantize") and str(bound.args[0].ty.dtype) == "float32":
            scale, zp = one_value(bound.args[1]), one_value(bound.args[2])
            if scale is None or zp is None:
                return None
            lo, hi = _RANGE[str(bound.ty.dtype)]  # relax.quantize's formula: clip(round(x / scale) + zp)
            scaled = self.builder_.emit(relax.op.divide(bound.args[0], relax.const(scale, "float32")))
            shifted = relax.op.add(self.builder_.emit(relax.op.round(scaled)), relax.const(float(zp), "float32"))
            return self.builder_.emit(relax.op.clip(self.builder_.emit(shifted), float(lo), float(hi)))
        return None

    def _dequantized(self, expr, what: str):
        dq = self._binding(expr)
        if not _op(dq, "dequantize"):
            raise _Refused(f"its {what} is not the output of a DequantizeLinear")
        return dq

    def _integer(self, q):
        """The integer replacement of one QuantizeLinear and the kernel below it, or _Refused."""
        out_dtype = str(q.ty.dtype)
        y_scale, y_zp = one_value(q.args[1]), one_value(q.args[2])
        v = self._binding(q.args[0])
        lo, hi = _RANGE.get(out_dtype, (None, None))
        if _op(v, "nn.relu") or _op(v, "clip"):
            a_lo, a_hi = (0.0, None) if _op(v, "nn.relu") else (float(v.args[1].value), float(v.args[2].value))
            v = self._binding(v.args[0])
        else:
            a_lo = a_hi = None
        bias = None
        if _op(v, "add"):
            left, right = self._binding(v.args[0]), self._binding(v.args[1])
            kernel, bias = (left, right) if _kernel(left) else (right, left)
        else:
            kernel = v
        if not _kernel(kernel):
            raise _Refused("no convolution or matrix product under it")
        if out_dtype not in _INT8:
            raise _Refused(f"its output is quantised to {out_dtype}; integer kernels produce int8/uint8")
        if y_scale is None or y_zp is None:
            raise _Refused("the output scale or zero point is not one constant (per-tensor)")
        x_dq = self._dequantized(kernel.args[0], "input")
        w_arg = self._binding(kernel.args[1])
        transposed = _op(w_arg, "permute_dims")
        w_dq = self._dequantized(w_arg.args[0] if transposed else w_arg, "weight")
        xq, x_scale, x_zp = x_dq.args[0], one_value(x_dq.args[1]), one_value(x_dq.args[2])
        if str(xq.ty.dtype) not in _INT8:
            raise _Refused(f"its input is {xq.ty.dtype}; integer kernels take int8/uint8 activations")
        if x_scale is None or x_zp is None:
            raise _Refused("the input is not quantised per tensor (one constant scale and zero point)")
        w, w_scale, w_zp = _const(w_dq.args[0]), _const(w_dq.args[1]), _const(w_dq.args[2])
        if w is None or w_scale is None or w_zp is None:
            raise _Refused("its weights are not constants")
        if w.dtype not in (np.int8, np.uint8):
            raise _Refused(f"its weights are {w.dtype}; integer kernels take 8-bit weights")
        out_axis = 0 if _op(kernel, "nn.conv2d") or transposed else w.ndim - 1
        channels = w.shape[out_axis]
        for what, arr in (("scale", w_scale), ("zero point", w_zp)):
            if arr.size not in (1, channels) or (arr.size > 1 and int(w_dq.attrs.axis) % w.ndim != out_axis):
                raise _Refused(f"its weight {what} varies along axis {int(w_dq.attrs.axis)}, not per output channel")
        along = [channels if i == out_axis else 1 for i in range(w.ndim)]
        # asymmetric weights: the zero point is subtracted here, at compile time (|w - zp| <= 255)
        w = w.astype(np.int32) - np.broadcast_to(w_zp.astype(np.int32).reshape(-1), (channels,)).reshape(along)
        w_scale = np.broadcast_to(w_scale.astype(np.float32).reshape(-1), (channels,))
        bias_q = None
        if bias is not None:
            if _op(bias, "reshape"):
                bias = self._binding(bias.args[0])
            b_dq = self._dequantized(bias, "bias")
            b, b_scale = _const(b_dq.args[0]), _const(b_dq.args[1])
            if b is None or b.dtype != np.int32 or np.any(_const(b_dq.args[2]) != 0):
                raise _Refused("its bias is not a constant int32 with zero point 0")
            expected = np.float32(x_scale) * w_scale
            if not np.allclose(np.broadcast_to(b_scale.reshape(-1), (channels,)), expected, rtol=1e-5):
                raise _Refused("its bias scale is not input scale x weight scale")
            bias_q = b.reshape(-1)
        if _op(kernel, "nn.conv2d") and (kernel.attrs.data_layout != "NCHW" or kernel.attrs.kernel_layout != "OIHW"):
            raise _Refused(f"layout {kernel.attrs.data_layout}/{kernel.attrs.kernel_layout}; expected NCHW/OIHW")

        emit = self.builder_.emit
        lo_x, hi_x = _RANGE[str(xq.ty.dtype)]
        w_rows = (w if _op(kernel, "nn.conv2d") or transposed else w.T).reshape(channels, -1)
        # |any partial sum| <= max|x - x_zp| * sum_k |w[c, k]| (+ |bias|): when that is below 2**24
        # every product and partial sum is an integer float32 holds exactly, so the float kernels
        # (FMA: twice AVX2's int32 multiply rate) give exactly the int32 result
        bound = max(x_zp - lo_x, hi_x - x_zp) * int(np.abs(w_rows.astype(np.int64)).sum(axis=1).max(initial=0))
        bound += int(np.abs(bias_q.astype(np.int64)).max(initial=0)) if bias_q is not None else 0
        k = w_rows.shape[1]
        fits_int8 = w_rows.size == 0 or (int(w_rows.min()) >= -128 and int(w_rows.max()) <= 127)
        # x - shift is what the kernel reads; sum_k (shift - x_zp) * w[c, k] joins the bias
        dot = dot_form(self.dot, k, channels) if self._pointwise(kernel) else None  # its channels fit it
        if dot is not None and dot.int16_sums and not _fits_int16_sums(w_rows, dot):
            dot = None  # two weights of -128 (or asymmetric ones) that one int16 lane would sum
        if dot is not None and (dot.dtype not in _INT8 or fits_int8):  # 8-bit weights: w - w_zp fits int8
            # int16 operands: x - x_zp; 8-bit ones: x moved into the operand's range (a uint8 input
            # read as x - 128 for sdot, an int8 one as x + 128 for vpdpbusd)
            narrow = dot.data_dtype
            shift = x_zp if narrow not in _INT8 else lo_x - _RANGE[narrow][0]
            acc_dtype, how = "int32", f"{dot.what} ({self.dot})"
        elif bound < _FLOAT_EXACT:
            acc_dtype, narrow, shift, how = "float32", "float32", x_zp, "exact in float32"
        else:
            acc_dtype, narrow, shift, how = "int32", "int16", x_zp, "int32"
        if shift != x_zp:
            correction = (shift - x_zp) * w_rows.astype(np.int64).sum(axis=1)
            bias_q = correction + (bias_q.astype(np.int64) if bias_q is not None else 0)
            if np.abs(bias_q).max() >= 2 ** 31:
                raise _Refused("its bias, with the input zero point folded in, does not fit int32")
            bias_q = bias_q.astype(np.int32)
        wide = "int16" if narrow in _INT8 else narrow  # where the shift is subtracted
        xi = xq
        if shift or str(xq.ty.dtype) != narrow:
            xi = self._float_values(xq) if narrow == "float32" else None
            xi = emit(relax.op.astype(xq, wide)) if xi is None else xi
            if shift:
                xi = emit(relax.op.subtract(xi, relax.const(shift, wide)))
            if narrow != wide:
                xi = emit(relax.op.astype(xi, narrow))
        w_dtype = "int8" if narrow in _INT8 else narrow
        if _op(kernel, "nn.conv2d"):
            a = kernel.attrs
            acc = emit(relax.op.nn.conv2d(xi, relax.const(w.astype(w_dtype)), a.strides, a.padding, a.dilation,
                                          a.groups, "NCHW", "OIHW", "NCHW", acc_dtype))
            per_channel = (1, channels, 1, 1)
        else:
            weight = relax.const((w.T if transposed else w).astype(w_dtype))
            acc = emit(relax.op.matmul(xi, weight, out_dtype=acc_dtype))
            per_channel = (channels,)
        if bias_q is not None:
            acc = emit(relax.op.add(acc, relax.const(bias_q.reshape(per_channel).astype(acc_dtype))))
        # onnxruntime's requantisation, in its order: scales multiplied and divided in float32
        multiplier = (np.float32(x_scale) * w_scale / np.float32(y_scale)).astype(np.float32)
        f = emit(relax.op.astype(acc, "float32")) if acc_dtype == "int32" else acc
        f = emit(relax.op.multiply(f, relax.const(multiplier.reshape(per_channel))))
        f = emit(relax.op.add(emit(relax.op.round(f)), relax.const(float(y_zp), "float32")))
        if a_lo is not None:  # the activation before the QuantizeLinear, as a clamp in its output range
            lo = max(lo, int(np.round(np.float32(a_lo) / np.float32(y_scale))) + int(y_zp))
        if a_hi is not None:
            hi = min(hi, int(np.round(np.float32(a_hi) / np.float32(y_scale))) + int(y_zp))
        kind = ("conv2d" if _op(kernel, "nn.conv2d") else "matmul") + f" ({how})"
        self.report.int8[kind] = self.report.int8.get(kind, 0) + 1
        return relax.op.astype(emit(relax.op.clip(f, float(lo), float(hi))), out_dtype)


def integer_kernels(report: FusionReport, cpu: CpuParams) -> tvm.transform.Pass:

    @tvm.transform.module_pass(opt_level=0, name="mobilec.IntegerKernels")
    def run(mod, _ctx):
        if not any(_has_quantize(f) for _, f in mod.functions.items() if isinstance(f, relax.Function)):
            return mod
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = _Rewrite(mod, report, cpu.int_dot, _single_readers(func), cpu.l2_bytes).visit_expr(func)
        return relax.transform.DeadCodeElimination()(mod)

    return run


def _has_quantize(func) -> bool:
    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(1) if _op(e, "quantize") else None)
    return bool(found)


def _single_readers(func: relax.Function) -> set:
    """The quantised values (QuantizeLinear outputs) whose only reader is one DequantizeLinear that
    only one convolution reads."""
    graph = Bindings(func)
    single = set()
    for var, value in graph.value.items():
        if _op(value, "quantize"):
            dq = graph.only_reader(var, "dequantize")
            if dq is not None and graph.only_reader(dq, "nn.conv2d") is not None:
                single.add(var)
    return single
