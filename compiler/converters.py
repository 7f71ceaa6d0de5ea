"""Three ONNX converters of TVM's Relax frontend, overridden while mobilec imports.

TVM lowers ``Clip`` straight to TIR (``call_tir`` maximum/minimum) and two-input ``Min``/``Max``
to stack + reduce. Neither is visible to Relax patterns, so ReLU6 and h-swish written with Clip or
Min/Max (PyTorch's Hardtanh/ReLU6, tf2onnx, Keras) could not be recognised. With constant scalar
bounds we emit ``R.clip`` / ``R.minimum`` / ``R.maximum`` instead: the same maths, still Relax
ops. Anything else goes to TVM's own converter. This patches a private function of the frontend
(``_get_convert_map``) for the duration of one import; apache-tvm is pinned, and
tests/test_importer.py fails if the hook disappears.
"""

from __future__ import annotations

import contextlib
import math

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


OVERRIDES = {"Clip": Clip, "Min": _pairwise(F.Min), "Max": _pairwise(F.Max)}


@contextlib.contextmanager
def relax_friendly_converters():
    original = F._get_convert_map

    def patched():
        return {**original(), **OVERRIDES}

    F._get_convert_map = patched
    try:
        yield
    finally:
        F._get_convert_map = original
