"""Bilinear resize as two one-dimensional passes (the LR-ASPP head's 8x upsample to the input size).

TVM's resize computes every output element from four gathered input pixels, with the index
arithmetic per element; for LR-ASPP's last op (64x64x21 -> 512x512x21, 5.5 M outputs) that took
about 10 of 61 ms. Bilinear interpolation is separable:

  columns[.., y, X] = lerp(in[.., y, x0(X)], in[.., y, x1(X)], wx(X))     (input rows, output width)
  out[.., Y, X]     = lerp(columns[.., y0(Y), X], columns[.., y1(Y), X], wy(Y))

The second pass, the big one, reads two contiguous rows and writes one with a per-row weight:
vectorised over the row, nothing gathered. Coordinates are TVM's own (``topi``'s ``get_inx``),
with indices clamped to the border as TVM and onnxruntime do.

``TransposeBeforeUpsample`` moves a transpose of an upsampled map (the NHWC network's output
converted back to NCHW) onto the smaller input, so the big pass writes the output layout
directly.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx
from tvm.relax.dpl import is_op, rewrite_call, wildcard
from tvm.topi.image.resize import get_inx

MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
_TO_LAYOUT = {("NHWC", (0, 3, 1, 2)): "NCHW", ("NCHW", (0, 2, 3, 1)): "NHWC"}
_AXES = {"NCHW": (2, 3), "NHWC": (1, 2)}  # (height, width) axes


def _separable(call: relax.Call) -> bool:
    a = call.attrs
    data = call.args[0].ty
    return (a.method == "linear" and a.layout in _AXES and a.coordinate_transformation_mode in MODES
            and data.shape is not None and all(isinstance(d, tirx.IntImm) for d in data.shape)
            and all(isinstance(d, tirx.IntImm) for d in call.ty.shape) and str(data.dtype) == "float32")


def _taps(out_i, in_size: int, out_size: int, mode: str):
    """(first index, second index, weight of the second) of output index ``out_i``."""
    if mode == "align_corners" and out_size == 1:  # ONNX: 0 (TVM's formula divides by zero)
        src = tirx.const(0.0, "float32")
    else:
        src = get_inx(out_i, tirx.IntImm("int32", in_size), tirx.IntImm("int32", out_size), mode)
    first = te.floor(src)
    weight = src - first
    first = first.astype("int32")
    clamp = lambda i: te.max(te.min(i, in_size - 1), 0)
    return clamp(first), clamp(first + 1), weight


def separable_resize(data: te.Tensor, out_h: int, out_w: int, layout: str, mode: str) -> te.Tensor:
    hy, wx = _AXES[layout]
    in_h, in_w = int(data.shape[hy]), int(data.shape[wx])
    shape = [int(d) for d in data.shape]

    def lerp(a, b, t):
        return a * (1.0 - t) + b * t

    def columns_at(*i):
        x0, x1, t = _taps(i[wx], in_w, out_w, mode)
        at = lambda x: data[tuple(x if k == wx else v for k, v in enumerate(i))]
        return lerp(at(x0), at(x1), t)

    columns = te.compute([out_w if k == wx else d for k, d in enumerate(shape)], columns_at, name="resize_columns")

    def rows_at(*i):
        y0, y1, t = _taps(i[hy], in_h, out_h, mode)
        at = lambda y: columns[tuple(y if k == hy else v for k, v in enumerate(i))]
        return lerp(at(y0), at(y1), t)

    out_shape = [out_h if k == hy else out_w if k == wx else d for k, d in enumerate(shape)]
    return te.compute(out_shape, rows_at, name="resize_rows")


def legalize_resize2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """LegalizeOps entry for ``relax.image.resize2d``: bilinear with static float32 shapes as two
    passes, anything else as TVM legalizes it."""
    if not _separable(call):
        return tvm.ir.Op.get("relax.image.resize2d").get_attr("FLegalize")(bb, call)
    hy, wx = _AXES[call.attrs.layout]
    out = [int(d) for d in call.ty.shape]
    return bb.call_te(separable_resize, call.args[0], out[hy], out[wx], str(call.attrs.layout),
                      str(call.attrs.coordinate_transformation_mode), primfunc_name_hint="resize2d_separable")


def _hoist(call: relax.Call, matches) -> relax.Expr:
    resize = matches[_RESIZE]
    perm = tuple(int(a) for a in call.attrs.axes) if call.attrs.axes is not None else None
    to = _TO_LAYOUT.get((str(resize.attrs.layout), perm))
    small = resize.args[0].ty.shape
    if to is None or not _separable(resize) or _numel(small) >= _numel(resize.ty.shape):
        return call
    a = resize.attrs
    return relax.op.image.resize2d(
        relax.op.permute_dims(resize.args[0], list(perm)), resize.args[1], roi=[float(r) for r in a.roi],
        layout=to, method=a.method, coordinate_transformation_mode=a.coordinate_transformation_mode,
        rounding_method=a.rounding_method, cubic_alpha=a.cubic_alpha, cubic_exclude=a.cubic_exclude,
        extrapolation_value=a.extrapolation_value, out_dtype=a.out_dtype)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


_RESIZE = is_op("relax.image.resize2d")(wildcard(), wildcard())
_PATTERN = is_op("relax.permute_dims")(_RESIZE)


@relax.transform.function_pass(opt_level=0, name="mobilec.TransposeBeforeUpsample")
class TransposeBeforeUpsample:
    """T(upsample(x)) -> upsample'(T(x)), the transpose on the smaller map (NHWC <-> NCHW)."""

    def transform_function(self, func, mod, ctx):
        if not isinstance(func, relax.Function):
            return func
        return rewrite_call(_PATTERN, _hoist, func)
