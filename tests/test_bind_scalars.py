"""compiler/bind_scalars.py: the scales a fused int8 kernel divides by are compile-time constants
in it, so no vector division is left in its loops (numerics: every build runs the pass, and
test_quantized.py compares them with the QDQ reference)."""

import re

import pytest
import tvm
from tvm import relax

from helpers import assembly
from mobilec.compiler.bind_scalars import _primitive, _scalar_ranks
from mobilec.compiler.importer import import_onnx
from mobilec.compiler.pipeline import PipelineOptions, run_until
from mobilec.targets import resolve
from quant import kernel, quantized


@pytest.mark.build
def test_the_scales_a_kernel_divides_by_are_bound_into_it(tmp_path):
    """After fusion no fused kernel of a quantised conv -> h-swish -> conv takes a scale or divisor
    as a parameter: each is a 0-d constant of its body."""
    qdq = quantized(tmp_path, kernel("hswish"))
    target = resolve("aarch64-linux-gnu", "cortex-a55", 2).tvm_target()
    mod = run_until(import_onnx(qdq).mod, target, PipelineOptions(), "fuse")
    fused = {gv.name_hint: f for gv, f in mod.functions.items() if _primitive(f)}
    assert any("divide" in name or "quantize" in name for name in fused), list(fused)
    for name, func in fused.items():
        assert not _scalar_ranks(func), name  # no parameter left that only a scale or divisor reads
        divisors = []
        relax.analysis.post_order_visit(func.body, lambda e: divisors.append(e.args[1]) if isinstance(e, relax.Call)
                                        and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.divide" else None)
        assert all(isinstance(d, tvm.ir.expr.Constant) and d.ty.ndim == 0 for d in divisors), name


@pytest.mark.build
@pytest.mark.parametrize("cpu", ["cortex-a55", "cortex-a53"])
def test_no_vector_division_left_in_int8_kernels(cpu, tmp_path):
    """The requantising epilogues (h-swish, then QuantizeLinear's division by the scale) are
    multiply-adds only; with the scale a run-time parameter they also computed a vector ``fdiv``
    per element (the exact-division fallback, evaluated on both sides once vectorised)."""
    asm = assembly(quantized(tmp_path, kernel("hswish")), "aarch64-linux-gnu", cpu)
    assert "fmla" in asm or "sdot" in asm
    assert not re.search(r"^\s*fdiv\s+v\d+\.4s", asm, re.M)
