"""Converters of TVM's Relax ONNX frontend, overridden while mobilec imports.

TVM lowers ``Clip`` straight to TIR (``call_tir`` maximum/minimum) and two-input ``Min``/``Max``
to stack + reduce. Neither is visible to Relax patterns, so ReLU6 and h-swish written with Clip or
Min/Max (PyTorch's Hardtanh/ReLU6, tf2onnx, Keras) could not be recognised. With constant scalar
bounds we emit ``R.clip`` / ``R.minimum`` / ``R.maximum`` instead: the same maths, still Relax
ops. Anything else (bounds given as graph inputs, NaN bounds) goes to TVM's own converter.
``ConvTranspose`` with ``output_shape`` gets its pads computed as the ONNX spec says (TVM ignores
the attribute and answers another shape). Every converter is wrapped so that a failure names
its node (``ConversionError``). This patches a private function of the frontend
(``_get_convert_map``) for the duration of one import; apache-tvm is pinned, and
tests/test_importer.py fails if the override stops taking effect.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend as F


def _scalar(expr):
    if isinstance(expr, tvm.ir.GenericConst):
        arr = expr.value.numpy()
        if arr.size == 1 and not math.isnan(float(arr.reshape(()))):
            return float(arr.reshape(()))
    return None


class Clip(F.Clip):
    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        x, lo, hi = (list(inputs) + [None, None])[:3]
        bounds = [_scalar(b) if b is not None else None for b in (lo, hi)]
        if any(b is not None and v is None for b, v in zip((lo, hi), bounds)):
            return super()._impl_v13(bb, inputs, attr, params)  # dynamic or NaN bounds
        lo_v, hi_v = bounds
        if lo_v is not None and hi_v is not None:
            return relax.op.clip(x, lo_v, hi_v)
        dtype = x.ty.dtype
        if lo_v is not None:
            x = relax.op.maximum(x, relax.const(lo_v, dtype))
        if hi_v is not None:
            x = relax.op.minimum(x, relax.const(hi_v, dtype))
        return x


def _pairwise(base):
    class Pairwise(base):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            if len(inputs) == 2 and not all(isinstance(i, tvm.ir.GenericConst) for i in inputs):
                return cls._impl_dynamic(bb, inputs)  # binary minimum/maximum with broadcasting
            return super()._impl_v1(bb, inputs, attr, params)

    Pairwise.__name__ = base.__name__
    return Pairwise


class ConvTranspose(F.ConvTranspose):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        if "output_shape" in attr:
            cls._pads_from_output_shape(inputs, attr)
        return super()._impl_v1(bb, inputs, attr, params)

    @staticmethod
    def _pads_from_output_shape(inputs, attr):
        """ONNX: total_padding = stride*(in-1) + output_padding + (k-1)*dilation + 1 - out, split
        begin/end by auto_pad. A negative end pad (the output is longer) becomes extra
        output_padding, which TVM adds at the end."""
        x_shape = [int(d) for d in inputs[0].ty.shape]
        n = len(x_shape) - 2
        kernel = list(attr.get("kernel_shape") or [int(d) for d in inputs[1].ty.shape][2:])
        strides = list(attr.get("strides", [1] * n))
        dilations = list(attr.get("dilations", [1] * n))
        out_pad = list(attr.get("output_padding", [0] * n))
        out_shape = list(attr.pop("output_shape"))[-n:]  # spatial dims (N, C may be given too)
        auto_pad = attr.pop("auto_pad", b"NOTSET")
        upper = (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) == "SAME_UPPER"
        begin, end = [], []
        for i in range(n):
            total = strides[i] * (x_shape[i + 2] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1 - out_shape[i]
            b = total // 2 if upper else total - total // 2
            e = total - b
            if b < 0:
                raise ValueError(f"output_shape {out_shape} needs negative padding at the start of spatial dim {i}, "
                                 f"which TVM's conv_transpose cannot express; give pads instead")
            out_pad[i] += max(-e, 0)
            begin.append(b)
            end.append(max(e, 0))
        attr["pads"], attr["output_padding"] = begin + end, out_pad


def _const_array(expr, params):
    """The value of a constant operand as numpy (None when absent or empty), else raise."""
    if expr is None:
        return None
    expr = F.get_constant(expr, params)
    if not isinstance(expr, tvm.ir.GenericConst):
        raise ValueError("its roi, scales and sizes must be constants (initializers) in a static-shape build")
    arr = expr.value.numpy()
    return arr if arr.size else None


class Resize(F.Resize):
    """TVM's converter resizes by the ratio of the output to the input size, in float32 arithmetic
    that breaks ONNX's exact nearest-pixel ties the other way (2 -> 7 pixels), and ignores ``axes``,
    ``keep_aspect_ratio_policy`` and ``antialias``. Here: nearest is a gather with indices computed
    by the ONNX formulas at compile time (exact, any scale); linear/cubic go to TVM with full-rank
    sizes when its maths is ONNX's; the rest is refused, by name."""

    MODES = ("half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel", "tf_half_pixel_for_nn",
             "tf_crop_and_resize")

    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        def text(v):
            return v.decode() if isinstance(v, bytes) else v

        coord = text(attr.get("coordinate_transformation_mode", "half_pixel"))
        mode = text(attr.get("mode", "nearest"))
        if coord not in cls.MODES:
            raise ValueError(f"coordinate_transformation_mode {coord!r} is not supported by TVM (it has "
                             f"{', '.join(cls.MODES)})")
        policy = text(attr.pop("keep_aspect_ratio_policy", "stretch"))
        axes = attr.pop("axes", None)
        antialias = attr.pop("antialias", 0)
        x = inputs[0]
        in_shape = [int(d) for d in x.ty.shape]
        rank = len(in_shape)
        axes = [int(a) % rank for a in axes] if axes is not None else list(range(rank))
        roi, scales, sizes = (_const_array(inputs[i], params) for i in (1, 2, 3))
        if roi is not None and len(roi) == 2 * len(axes) and len(axes) < rank:
            full = [0.0] * rank + [1.0] * rank
            for k, a in enumerate(axes):
                full[a], full[rank + a] = roi[k], roi[len(axes) + k]
            roi = np.array(full, "float32")
        out, scale = list(in_shape), [1.0] * rank  # output size and the scale ONNX maps pixels back with
        if sizes is not None:
            sizes = [int(v) for v in sizes]
            if policy != "stretch":  # one scale for all the axes: the output fits inside / covers sizes
                pick = min if policy == "not_larger" else max
                common = pick(sz / in_shape[a] for sz, a in zip(sizes, axes))
                sizes = [int(math.floor(common * in_shape[a] + 0.5)) for a in axes]
            for sz, a in zip(sizes, axes):
                out[a] = sz
                scale[a] = common if policy != "stretch" else sz / in_shape[a]
        elif scales is not None:
            if coord == "tf_crop_and_resize":
                raise ValueError("tf_crop_and_resize with scales is not supported; give sizes")
            for sc, a in zip(scales.tolist(), axes):
                out[a], scale[a] = int(math.floor(in_shape[a] * sc + 1e-6)), sc
        else:
            raise ValueError("neither scales nor sizes is given")
        if out[:2] != in_shape[:2]:
            raise ValueError(f"resizes the batch or channel dims ({in_shape} -> {out}); TVM resizes spatial dims only")
        if mode == "nearest" and coord != "tf_crop_and_resize":
            nearest = text(attr.get("nearest_mode", "round_prefer_floor"))
            for a in range(2, rank):
                if out[a] != in_shape[a] or scale[a] != 1.0:
                    idx = _nearest_indices(in_shape[a], out[a], scale[a], coord, nearest)
                    x = bb.emit(relax.op.take(x, relax.const(idx, "int64"), axis=a, mode="clip"))
            return x
        if antialias and any(o < d for o, d in zip(out, in_shape)):
            raise ValueError("antialias=1 when downsampling is not supported by TVM; export without antialias")
        if coord != "tf_crop_and_resize":
            for a in range(2, rank):
                if abs(out[a] - scale[a] * in_shape[a]) > 1e-5 * max(out[a], 1):
                    raise ValueError(
                        f"scale {scale[a]:g} on a dim of {in_shape[a]} gives {scale[a] * in_shape[a]:g} pixels, not "
                        f"a whole number; TVM would resize by {out[a]}/{in_shape[a]} instead: give sizes (or scales "
                        f"that divide evenly)")
        roi_const = relax.const(roi, "float32") if roi is not None else None
        return super()._impl_v18(bb, [x, roi_const, None, relax.const(np.array(out, "int64"))], attr, params)


def _nearest_indices(n_in: int, n_out: int, scale: float, coord: str, nearest: str) -> np.ndarray:
    """Input index of every output pixel of a nearest resize, by the ONNX spec's formulas."""
    x = np.arange(n_out, dtype=np.float64)
    if coord in ("half_pixel", "pytorch_half_pixel"):
        src = (x + 0.5) / scale - 0.5
        if coord == "pytorch_half_pixel" and n_out == 1:
            src = np.zeros_like(x)
    elif coord == "align_corners":
        src = x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(x)
    elif coord == "asymmetric":
        src = x / scale
    else:  # tf_half_pixel_for_nn
        src = (x + 0.5) / scale
    rounded = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
               "floor": np.floor, "ceil": np.ceil}[nearest](src)
    return np.clip(rounded, 0, n_in - 1).astype("int64")


class Dropout(F.Dropout):
    """Dropout in eval mode (training mode is refused before import) is the identity, and its
    optional mask is all true: bool since opset 10, the input's type before. TVM's converter
    answers a float mask."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        return cls._eval(inputs[0], attr, inputs[0].ty.dtype)

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        return cls._eval(inputs[0], attr, "bool")

    _impl_v12 = _impl_v10  # TVM's own v12 (ratio as an input) would be chosen otherwise

    @staticmethod
    def _eval(x, attr, mask_dtype):
        if attr.get("tvm_custom", {}).get("num_outputs", 1) < 2:
            return x
        return relax.Tuple([x, relax.op.ones(x.ty.shape, mask_dtype)])


class ConversionError(Exception):
    """A converter failed; ``node`` names it, ``__cause__`` is TVM's exception."""

    def __init__(self, node: str):
        super().__init__(node)
        self.node = node


def _reporting(op: str, base):
    class Reporting(base):
        @classmethod
        def get_converter(cls, opset):
            impl = super().get_converter(opset)

            def convert(bb, inputs, attr, params):
                try:
                    return impl(bb, inputs, attr, params)
                except Exception as e:
                    raise ConversionError(attr.get("tvm_custom", {}).get("name") or op) from e

            return convert

    Reporting.__name__ = base.__name__
    return Reporting


OVERRIDES = {"Clip": Clip, "Min": _pairwise(F.Min), "Max": _pairwise(F.Max), "ConvTranspose": ConvTranspose,
             "Resize": Resize, "Dropout": Dropout}
_REPORTING: dict = {}  # (op, converter class) -> its reporting subclass, made once


@contextlib.contextmanager
def relax_friendly_converters():
    """Our overrides and reporting converters in place of TVM's while the block runs. ``from_onnx``
    calls ``_get_convert_map`` once per node: the patched map is built once."""
    original = F._get_convert_map
    table = {}
    for op, conv in {**original(), **OVERRIDES}.items():
        if (op, conv) not in _REPORTING:
            _REPORTING[(op, conv)] = _reporting(op, conv)
        table[op] = _REPORTING[(op, conv)]

    def patched():
        return table

    F._get_convert_map = patched
    try:
        yield
    finally:
        F._get_convert_map = original
