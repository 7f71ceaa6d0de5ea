"""Zero points that cancel (compiler/cancel_zero_points.py): a requantised value that is read back
less its zero point becomes clip(round(t), lo - zp, hi - zp), with the same values, and the
kernels take the shorter form in."""

import numpy as np
import pytest
import tvm
from onnx import helper
from tvm import relax

from helpers import seeded_input
from graphs import C, HW, conv, model
from mobilec.compiler import compile_model, resolve
from mobilec.compiler.bindings import op_name
from mobilec.compiler.cancel_zero_points import CancelZeroPoints
from mobilec.compiler.importer import import_onnx
from mobilec.compiler.pipeline import PipelineOptions, run_until
from mobilec.compiler.quantized import integer_kernels
from mobilec.compiler.report import FusionReport
from mobilec.targets import INT_DOTS, cpu_params
from quant import assert_within_one_step, kernel, quantized


def squeeze_excite():
    """depthwise, ReLU, then a squeeze-and-excite block: the ReLU's output has two readers"""
    n, i = conv("input", "c", k=3, group=C)
    s1, i1 = conv("p", "s1", k=1, cout=4, seed=1)
    s2, i2 = conv("r1", "s2", k=1, cin=4, seed=2)
    nodes = n + [helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"])] + s1 \
        + [helper.make_node("Relu", ["s1"], ["r1"])] + s2 \
        + [helper.make_node("HardSigmoid", ["s2"], ["g"], alpha=1 / 6), helper.make_node("Mul", ["r", "g"], ["output"])]
    return model(nodes, i + i1 + i2)


def _requantised_reads(mod) -> int:
    """Dequantisations and zero-point subtractions of a clamped requantisation left in ``mod``."""
    found = []

    def visit(e):
        if op_name(e) in ("relax.dequantize", "relax.subtract"):
            found.append(e)

    relax.analysis.post_order_visit(mod["main"], visit)
    return len(found)


def _run(mod, x):
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


GRAPHS = {"hswish": lambda: kernel("hswish"), "residual": lambda: kernel("residual"),
          "expand_depthwise": lambda: kernel("expand_depthwise"), "squeeze_excite": squeeze_excite}


# (requantised reads before, after) per graph and per kind of integer kernel input, which the CPU's
# dot instruction decides (targets.INT_DOTS): uint8 data (vpdpbusd) reads the 8 bits as they are;
# signed data (int16 for vpmaddwd, int8 for sdot and smull) reads them less the zero point, a
# subtraction the kernel keeps; without an instruction the convolutions run in float32
READS = {
    "hswish": {"uint8": (2, 0), "signed": (4, 2), "float": (4, 0)},  # the h-swish's input and the output
    "residual": {"uint8": (3, 2), "signed": (5, 4), "float": (5, 3)},  # an output also read as 8 bits: kept
    "expand_depthwise": {"uint8": (1, 0), "signed": (2, 1), "float": (2, 0)},
    "squeeze_excite": {"uint8": (3, 0), "signed": (3, 0), "float": (3, 0)},  # two DequantizeLinears: one value
}
PATHS = {"uint8": ("x86_64-linux-gnu", "cascadelake"), "signed": ("x86_64-linux-gnu", "core-avx2"),
         "float": ("aarch64-linux-gnu", "cortex-a53")}


def _path(cpu) -> str:
    """Which kind of integer kernel input a CPU's dot instruction takes."""
    if not cpu.int_dot:
        return "float"
    return "uint8" if INT_DOTS[cpu.int_dot][0].data_dtype == "uint8" else "signed"


@pytest.mark.build
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("graph", list(READS))
def test_cancelled_chains_compute_the_same_values(graph, path, tmp_path):
    """Each graph's requantised values read back less their zero point are rewritten, and the
    rewritten module's output is bit-identical to the one before. Each kind of kernel input is
    checked on any host: the rewrite is target-independent Relax, run here by a generic build."""
    target = resolve(*PATHS[path]).tvm_target()
    cpu = cpu_params(target)
    assert _path(cpu) == path  # the preset stands for the path it is named for
    qdq = quantized(tmp_path, GRAPHS[graph]())
    with target:
        before = integer_kernels(FusionReport(), cpu)(import_onnx(qdq).mod)
    after = CancelZeroPoints()(before)
    assert (_requantised_reads(before), _requantised_reads(after)) == READS[graph][path]
    x = seeded_input((1, C, HW, HW), 1) * 4  # wide enough to reach both ends of the clamps
    np.testing.assert_array_equal(_run(after, x), _run(before, x))


@pytest.mark.build
def test_a_squeeze_excite_input_leaves_the_depthwise_as_float(tmp_path):
    """The depthwise's requantised output, which the block's two DequantizeLinears read, leaves its
    kernel dequantised (no dequantisation kernel of its own) and the model matches the QDQ file."""
    qdq = quantized(tmp_path, squeeze_excite())
    lowered = run_until(import_onnx(qdq).mod, resolve("host").tvm_target(), PipelineOptions(), "lower")
    kernels = [gv.name_hint for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert not [k for k in kernels if k.startswith("dequantize")], kernels
    res = compile_model(qdq, tmp_path / "se.so")
    assert res.report.matched.get("mobilec.conv2d_requantize") == 1, res.report.to_dict()
    assert_within_one_step(res.library, qdq)


def _requantisation(zero_point: float, dequantize_zero_point=None, divided=False) -> tvm.IRModule:
    """clip(round(x) + zero_point, 0, 255) cast to uint8, dequantised (scale 0.5) when given a
    zero point for that; or, ``divided``, a float model's 1 / clip(...). 512 float32 inputs."""
    x = relax.Var("x", relax.TensorType((1, 512), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            r = bb.emit(relax.op.round(x))
            c = bb.emit(relax.op.clip(bb.emit(relax.op.add(r, relax.const(zero_point, "float32"))), 0.0, 255.0))
            out = relax.op.divide(relax.const(1.0, "float32"), c) if divided else relax.op.astype(c, "uint8")
            if dequantize_zero_point is not None:
                out = relax.op.dequantize(bb.emit(out), relax.const(0.5, "float32"),
                                          relax.const(dequantize_zero_point, "uint8"))
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


def _same_values(before, after, extra):
    values = np.concatenate([np.linspace(-300, 300, 506), extra]).astype(np.float32)[None]
    np.testing.assert_array_equal(_run(after, values), _run(before, values))


@pytest.mark.build
@pytest.mark.parametrize("dq_zero_point, left", [(3, 0), (4, 1)])
def test_only_the_same_zero_point_cancels(dq_zero_point, left):
    """clip(round(x) + 3) cast to uint8 and dequantised: with zero point 3 it becomes
    clip(round(x), -3, 252) * 0.5; with another one it reads the 8 bits as before. Same values."""
    before = _requantisation(3.0, dq_zero_point)
    after = CancelZeroPoints()(before)
    assert _requantised_reads(after) == left
    _same_values(before, after, [1e30, -1e30, 2.5, -3.5, np.inf, -np.inf])


@pytest.mark.build
@pytest.mark.parametrize("divided", [False, True])
def test_a_zero_point_of_zero_needs_no_add(divided):
    """clip(round(x) + 0, 0, 255) stored as uint8 (a ReLU's requantisation) loses the add; the bytes
    are the same, for inputs that round to -0.0 too. A float model's clip that a division reads
    keeps it (1 / -0.0 is -inf)."""
    before = _requantisation(0.0, divided=divided)
    after = CancelZeroPoints()(before)
    adds = []
    relax.analysis.post_order_visit(after["main"], lambda e: adds.append(e) if op_name(e) == "relax.add" else None)
    assert len(adds) == divided
    _same_values(before, after, [-0.4, -0.0, 0.4, 255.5, np.inf, -np.inf])
