"""Division by one value through multiply-adds (compiler/exact_division.py): bit-identical to the
division, on ties, near-ties and random values, for divisors whose reciprocal is awkward, tiny or
huge, and where the fast form does not apply (subnormal or infinite divisors)."""

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import mobilec.runtime as mr
from helpers import assembly
from mobilec.compiler import CompileConfig, compile_model

N = 1 << 14
DIVISORS = [3.0, 6.0, 0.1, 1.9999999, 1.5 * (1 + 2 ** -23), 0.0235, 7e-5, 2.0 ** -120, 2.0 ** 127, np.inf, 1e-40]


def _model(divisor_input: bool) -> onnx.ModelProto:
    """y = x / s and q = QuantizeLinear(x, s, 3): s a run-time input (the one-element parameter a
    fused kernel gets), or the constant 0.0235."""
    inits = [numpy_helper.from_array(np.array(3, np.uint8), "z")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])]
    if divisor_input:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    else:
        inits.append(numpy_helper.from_array(np.array(0.0235, np.float32), "s"))
    nodes = [helper.make_node("Div", ["x", "s"], ["y"]), helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N]),
               helper.make_tensor_value_info("q", TensorProto.UINT8, [1, N])]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                             opset_imports=[helper.make_opsetid("", 19)])


def _values(s: np.float32) -> np.ndarray:
    """Random values, and for every tie (k + 1/2) * s the float on it and its two neighbours."""
    with np.errstate(all="ignore"):
        ties = ((np.arange(N // 4) - N // 8 + 0.5) * s).astype(np.float32)
    rng = np.random.default_rng(0)
    return np.concatenate([rng.standard_normal(N // 4).astype(np.float32) * 100, ties,
                           np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])[None]


@pytest.mark.build
def test_division_by_one_value_rounds_as_the_division(tmp_path):
    onnx.save(_model(True), tmp_path / "d.onnx")
    lib = mr.load(compile_model(str(tmp_path / "d.onnx"), tmp_path / "d.so", CompileConfig()).library,
                  check_finite=False)
    for s in map(np.float32, DIVISORS):
        x = _values(s)
        y, q = (np.asarray(o) for o in lib(x, np.array(s)))
        with np.errstate(all="ignore"):
            want = x / s
        same = (y.view(np.uint32) == want.view(np.uint32)) | (np.isnan(y) & np.isnan(want))
        assert same.all(), f"divisor {s}: {np.count_nonzero(~same)} quotients differ from the division"
        if np.isfinite(s):
            with np.errstate(all="ignore"):
                want_q = np.clip(np.round(want) + 3, 0, 255).astype(np.uint8)
            assert np.array_equal(q, want_q), f"divisor {s}: {np.count_nonzero(q != want_q)} quantised values differ"


@pytest.mark.build
def test_a_constant_divisor_leaves_no_division(tmp_path):
    """A constant divisor's reciprocal and range check are folded at compile time: the kernels
    multiply and correct with two FMAs, and divide nowhere."""
    onnx.save(_model(False), tmp_path / "c.onnx")
    asm = assembly(str(tmp_path / "c.onnx"), "x86_64-linux-gnu", "core-avx2")
    assert "vdivps" not in asm and "vdivss" not in asm and re.search(r"vfn?madd\d+ps", asm)
