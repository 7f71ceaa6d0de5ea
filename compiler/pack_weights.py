"""Pre-pack pointwise convolution weights at compile time (OIHW -> IHWO).

  conv2d(x, W[O,I,1,1], kernel_layout=OIHW) -> conv2d(x, W'[I,1,1,O], kernel_layout=IHWO)

W' is the constant transposed once, here, so the default pointwise schedule
(``mobilec.schedules.defaults``) loads a vector of output channels with one contiguous load when
the spatial map is too small to vectorise. The data layout stays NCHW.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from mobilec.compiler.fusions.base import const_array

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
