"""Pre-pack pointwise convolution weights at compile time.

NCHW graphs (``layout="NCHW"``), at the Relax level (``PackConvWeights``):

  conv2d(x, W[O,I,1,1], kernel_layout=OIHW) -> conv2d(x, W'[I,1,1,O], kernel_layout=IHWO)

W' is the constant transposed once, here, so the default pointwise schedule
(``mobilec.schedules.defaults``) loads a vector of output channels with one contiguous load when
the spatial map is too small to vectorise.

After lowering (``pack_kernel_weights``): NHWC pointwise and SE weights HWIO -> [O/b, 1, 1, I, b],
classifier weights [K, N] -> [N/b, K, b], b the schedule's channel tile (default or tuned: the
schedule lays out the weights it reads, evaluated at compile time); integer kernels' weights
grouped for the dot-product instruction.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from mobilec.compiler.fusions.base import const_array
from mobilec.schedules.defaults import LAYOUT_FREE, is_scheduled, weight_packing
from mobilec.targets import CpuParams

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


def pack_kernel_weights(cpu: CpuParams) -> tvm.transform.Pass:
    """Kernels read their weights packed as ``weight_packing`` plans, so each tile streams its
    weights from one contiguous run instead of K rows of the weight matrix (measured: half of a
    64-byte line used per row, and far slower with the weights cold, as they are inside a network).

    Float kernels (NHWC pointwise convs, classifiers, SE's FCs) get their weights marked
    layout-free: their schedule, default or tuned, lays them out for its own tiles
    (``defaults.pack_for_tiles``), and the pipeline evaluates that packing at compile time.
    Integer kernels' weights are packed here for the dot-product instruction: the kernel's weight
    buffers are re-laid out in TIR and every call site gets a ``layout_transform`` of its constant,
    which FoldConstant evaluates here."""
    def pack(func, plans):
        sch = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
        maps = {}
        for plan in (p for p in plans if p.group):
            index_map = plan.index_map(len(func.ty.params[plan.param].shape))
            sch.transform_layout(sch.get_sblock(plan.block), ("read", plan.read), index_map)
            maps[plan.param] = index_map
        free = sorted({p.param for p in plans if not p.group})
        return (sch.mod["main"].with_attr(LAYOUT_FREE, free) if free else sch.mod["main"]), maps

    @tvm.transform.module_pass(opt_level=0, name="mobilec.PackKernelWeights")
    def run(mod, _ctx):
        constant = _constant_parameters(mod)
        bb = relax.BlockBuilder(mod)
        packed = {}  # old kernel -> (new kernel, {weight parameter: index map})
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tvm.tirx.PrimFunc) or is_scheduled(func):
                continue
            # only weights that are constants at every call: a weight fed as a graph input would
            # need its layout_transform at run time, after the lowering that could compile it
            plans = [p for p in weight_packing(func, cpu) if p.param in constant.get(gv, ())]
            if plans:
                new_func, maps = pack(func, plans)
                packed[gv] = (bb.add_func(new_func, gv.name_hint), maps)
        if not packed:
            return mod
        call_tir = tvm.ir.Op.get("relax.call_tir")

        @relax.expr_functor.mutator
        class Rewrite(relax.PyExprMutator):
            def visit_call_(self, call):
                call = super().visit_call_(call)
                if not (call.op.same_as(call_tir) and call.args[0] in packed):
                    return call
                kernel, maps = packed[call.args[0]]
                args = list(call.args[1].fields)
                for param, index_map in maps.items():
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


def _constant_parameters(mod: tvm.IRModule) -> dict:
    """Per kernel: the parameters that are a constant at every call_tir calling it."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    found: dict = {}

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir) and isinstance(expr.args[1], relax.Tuple):
            here = {i for i, a in enumerate(expr.args[1].fields) if isinstance(a, Constant)}
            gv = expr.args[0]
            found[gv] = found[gv] & here if gv in found else here

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found
