"""conv + bias + activation / residual, and the dense classifier epilogue."""

import numpy as np
import pytest
from onnx import helper

from graphs import assert_matches_onnxruntime, const, conv, model
from mobilec.compiler import inspect_model


def conv_then(act):
    n, i = conv("input", "c")
    if act == "relu":
        n.append(helper.make_node("Relu", ["c"], ["output"]))
    elif act == "relu6":
        i += [const("lo", 0.0), const("hi", 6.0)]
        n.append(helper.make_node("Clip", ["c", "lo", "hi"], ["output"]))
    elif act == "residual":
        n.append(helper.make_node("Add", ["input", "c"], ["output"]))
    elif act == "none":
        n.append(helper.make_node("Identity", ["c"], ["output"]))
    return model(n, i)


@pytest.mark.structure
@pytest.mark.parametrize("act, name", [("relu", "mobilec.conv2d_bias_relu"), ("relu6", "mobilec.conv2d_bias_relu6"),
                                       ("residual", "mobilec.conv2d_bias_residual"), ("none", "mobilec.conv2d_bias")])
def test_conv_epilogues(act, name):
    report = inspect_model(conv_then(act)).report
    assert report.matched == {name: 1}, report.to_dict()


@pytest.mark.structure
def test_relu6_near_miss_clip_to_5():
    n, i = conv("input", "c")
    i += [const("lo", 0.0), const("hi", 5.0)]
    report = inspect_model(model(n + [helper.make_node("Clip", ["c", "lo", "hi"], ["output"])], i)).report
    assert "mobilec.conv2d_bias_relu6" not in report.matched
    assert any("ReLU6" in r["reason"] for r in report.refused)


@pytest.mark.structure
def test_dense_with_bias():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["input", "w", "b"], ["output"], transB=1)]
    proto = model(nodes, [const("w", rng.standard_normal((10, 16))), const("b", rng.standard_normal(10))],
                  inputs=(("input", (1, 16)),), output=("output", (1, 10)))
    report = inspect_model(proto).report
    assert report.matched == {"mobilec.dense_bias": 1}, report.to_dict()


@pytest.mark.build
@pytest.mark.parametrize("act", ["relu6", "residual"])
def test_numerics(act, tmp_path):
    assert_matches_onnxruntime(conv_then(act), tmp_path)
