"""NHWC graphs (tf2onnx / Keras style) with transposes around every conv: the pairs cancel."""

import numpy as np
import pytest
from onnx import helper

from graphs import C, HW, assert_matches_onnxruntime, const, conv, model
from mobilec.compiler import inspect_model

TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def nhwc_graph(blocks=3, break_perm=False):
    nodes, inits, x = [], [], "input"
    for b in range(blocks):
        n, i = conv(f"t{b}", f"c{b}", seed=b)
        bias = np.random.default_rng(b).standard_normal(C).astype(np.float32)
        nodes += [helper.make_node("Transpose", [x], [f"t{b}"], perm=TO_NCHW)] + n
        nodes += [helper.make_node("Transpose", [f"c{b}"], [f"h{b}"], perm=TO_NHWC),
                  helper.make_node("Add", [f"h{b}", f"nb{b}"], [f"a{b}"]),  # an NHWC per-channel add
                  helper.make_node("Relu", [f"a{b}"], [f"r{b}"])]
        inits += i + [const(f"nb{b}", bias)]
        x = f"r{b}"
    if break_perm:  # a transpose that is not undone must survive
        nodes.append(helper.make_node("Transpose", [x], ["output"], perm=[0, 2, 1, 3]))
    else:
        nodes.append(helper.make_node("Identity", [x], ["output"]))
    return model(nodes, inits, inputs=(("input", (1, HW, HW, C)),), output=("output", (1, HW, HW, C)))


def permutes(mod) -> int:
    return mod.script(show_meta=False).count("R.permute_dims")


@pytest.mark.structure
def test_pairs_cancel_between_convs():
    ins = inspect_model(nhwc_graph())
    # 3 convs had 6 transposes; the network runs NHWC, as the graph's input and output are: none left
    assert permutes(ins.mod) == 0, ins.mod.script(show_meta=False)
    assert ins.report.matched == {"mobilec.conv2d_bias_relu": 3}, ins.report.to_dict()


@pytest.mark.structure
def test_unmatched_transpose_survives():
    assert permutes(inspect_model(nhwc_graph(break_perm=True)).mod) == 1


@pytest.mark.build
@pytest.mark.parametrize("break_perm", [False, True])
def test_numerics(break_perm, tmp_path):
    assert_matches_onnxruntime(nhwc_graph(break_perm=break_perm), tmp_path)


def squeeze_excite_gate(quantized: bool):
    """conv, then a gate from the channel means (GlobalAveragePool, conv, sigmoid, multiply), with
    a per-tensor QuantizeLinear/DequantizeLinear pair after the conv when ``quantized``: the mean and
    the pair must not pin the network to NCHW."""
    n, i = conv("input", "c")
    x = "c"
    if quantized:
        i += [const("s", 0.05), helper.make_tensor("z", 2, [], [128])]  # 2: UINT8
        n += [helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
              helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        x = "dq"
    g, gi = conv("p", "g", k=1, seed=3)
    n += [helper.make_node("GlobalAveragePool", [x], ["p"])] + g + [
        helper.make_node("Sigmoid", ["g"], ["gs"]), helper.make_node("Mul", [x, "gs"], ["m"])]
    o, oi = conv("m", "output", seed=4)
    return model(n + o, i + gi + oi)


@pytest.mark.structure
@pytest.mark.parametrize("quantized", [False, True])
def test_transposes_sink_through_mean_and_per_tensor_qdq(quantized):
    # NCHW in and out: one transpose at the input, one at the output, none inside
    assert permutes(inspect_model(squeeze_excite_gate(quantized)).mod) == 2


@pytest.mark.build
@pytest.mark.parametrize("quantized", [False, True])
def test_squeeze_excite_gate_numerics(quantized, tmp_path):
    assert_matches_onnxruntime(squeeze_excite_gate(quantized), tmp_path)
