"""Pre-pack pointwise convolution weights at compile time.

NCHW graphs (``layout="NCHW"``), at the Relax level (``PackConvWeights``):

  conv2d(x, W[O,I,1,1], kernel_layout=OIHW) -> conv2d(x, W'[I,1,1,O], kernel_layout=IHWO)

W' is the constant transposed once, here, so the default pointwise schedule
(``mobilec.schedules.defaults``) loads a vector of output channels with one contiguous load when
the spatial map is too small to vectorise.

NHWC kernels, after lowering (``pack_kernel_weights``): HWIO -> [O/b, 1, 1, I, b], b the
schedule's vector tile.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from mobilec.compiler.fusions.base import const_array
from mobilec.schedules.defaults import CpuParams, is_scheduled, pointwise_weight_block

_PATTERN = is_op("relax.nn.conv2d")(wildcard(), is_const())


def _pack(call: relax.Call, matches) -> relax.Expr:
    a = call.attrs
    weight = call.args[1]
    if not isinstance(weight, Constant) or a.kernel_layout != "OIHW" or a.data_layout != "NCHW" or int(a.groups) != 1:
        return call
    oihw = const_array(weight)
    if oihw.shape[2:] != (1, 1):
        return call
    packed = np.ascontiguousarray(np.transpose(oihw, (1, 2, 3, 0)))
    return relax.op.nn.conv2d(call.args[0], relax.const(packed, str(packed.dtype)), strides=a.strides,
                              padding=a.padding, dilation=a.dilation, groups=a.groups, data_layout="NCHW",
                              kernel_layout="IHWO", out_layout=a.out_layout, out_dtype=a.out_dtype)


@relax.transform.function_pass(opt_level=0, name="mobilec.PackConvWeights")
class PackConvWeights:
    def transform_function(self, func, mod, ctx):
        if not isinstance(func, relax.Function):
            return func
        return rewrite_call(_PATTERN, _pack, func)


def pack_kernel_weights(target: tvm.target.Target) -> tvm.transform.Pass:
    """NHWC pointwise kernels read their weights packed [F/b, 1, 1, K, b], b the output channels
    of the default schedule's vector tile, so each tile streams its weights from one contiguous
    run instead of K rows of the HWIO matrix (measured: half of a 64-byte line used per row, and
    far slower with the weights cold, as they are inside a network). The kernel's weight buffer
    is re-laid out in TIR and every call site gets a ``layout_transform`` of its constant, which
    FoldConstant evaluates here, at compile time."""
    cpu = CpuParams.from_target(target)

    def pack(func, param: int, block: int):
        index_map = tvm.tirx.IndexMap.from_func(lambda h, w, i, o: (o // block, h, w, i, o % block))
        sch = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
        conv = sch.get_sblock("conv2d_nhwc")
        sch.transform_layout(conv, ("read", 1), index_map)
        return sch.mod["main"], index_map

    @tvm.transform.module_pass(opt_level=0, name="mobilec.PackKernelWeights")
    def run(mod, _ctx):
        bb = relax.BlockBuilder(mod)
        packed = {}  # old kernel -> (new kernel, weight parameter, index map)
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tvm.tirx.PrimFunc) or is_scheduled(func):
                continue
            plan = pointwise_weight_block(func, cpu)
            if plan is not None:
                new_func, index_map = pack(func, *plan)
                packed[gv] = (bb.add_func(new_func, gv.name_hint), plan[0], index_map)
        if not packed:
            return mod
        call_tir = tvm.ir.Op.get("relax.call_tir")

        @relax.expr_functor.mutator
        class Rewrite(relax.PyExprMutator):
            def visit_call_(self, call):
                call = super().visit_call_(call)
                if not (call.op.same_as(call_tir) and call.args[0] in packed):
                    return call
                kernel, param, index_map = packed[call.args[0]]
                args = list(call.args[1].fields)
                args[param] = relax.op.layout_transform(args[param], index_map)
                return relax.Call(call_tir, [kernel, relax.Tuple(args)] + list(call.args[2:]), call.attrs,
                                  call.ty_args)

        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                bb.update_func(gv, Rewrite().visit_expr(func))
        mod = bb.get()
        for gv in packed:
            del mod[gv]
        return relax.transform.FoldConstant()(mod)

    return run
