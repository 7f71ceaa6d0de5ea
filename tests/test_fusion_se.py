"""Squeeze-and-excite as one fused function: conv and matmul forms, h-sigmoid or sigmoid gates."""

import numpy as np
import pytest
from onnx import helper

from graphs import C, assert_matches_onnxruntime, const, hsigmoid_nodes, hswish_nodes, model
from mobilec.compiler import inspect_model


def act_nodes(act: str, x: str, out: str):
    """The activation between the FCs: ReLU, h-swish (FBNetV3), or h-swish with the wrong constants."""
    if act == "relu":
        return [helper.make_node("Relu", [x], [out])], []
    return hswish_nodes(x, out, "clip/div", div=6.0 if act == "hswish" else 7.0)


def se_graph(fc="conv", gate="hsigmoid", pool="global", act="relu", **kw):
    rng = np.random.default_rng(0)
    s = 4
    nodes, inits = [], []
    if pool == "global":
        nodes.append(helper.make_node("GlobalAveragePool", ["input"], ["p"]))
    else:  # a pool over the height alone is no SE
        nodes.append(helper.make_node("ReduceMean", ["input"], ["p"], axes=[2], keepdims=1))  # opset 17: attr
    if fc == "conv":
        inits += [const("w1", rng.standard_normal((s, C, 1, 1))), const("b1", rng.standard_normal(s)),
                  const("w2", rng.standard_normal((C, s, 1, 1))), const("b2", rng.standard_normal(C))]
        a_nodes, a_inits = act_nodes(act, "f1", "r")
        nodes += [helper.make_node("Conv", ["p", "w1", "b1"], ["f1"]), *a_nodes,
                  helper.make_node("Conv", ["r", "w2", "b2"], ["f2"])]
        inits += a_inits
    else:  # Keras / tf2onnx style: flatten, MatMul + Add, reshape back
        inits += [const("w1", rng.standard_normal((C, s))), const("b1", rng.standard_normal(s)),
                  const("w2", rng.standard_normal((s, C))), const("b2", rng.standard_normal(C)),
                  helper.make_tensor("flat", 7, [2], [1, C]), helper.make_tensor("back", 7, [4], [1, C, 1, 1])]
        nodes += [helper.make_node("Reshape", ["p", "flat"], ["pf"]), helper.make_node("MatMul", ["pf", "w1"], ["m1"]),
                  helper.make_node("Add", ["m1", "b1"], ["f1"]), helper.make_node("Relu", ["f1"], ["r"]),
                  helper.make_node("MatMul", ["r", "w2"], ["m2"]), helper.make_node("Add", ["m2", "b2"], ["f2f"]),
                  helper.make_node("Reshape", ["f2f", "back"], ["f2"])]
    if gate == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["f2"], ["g"]))
    else:
        n, i = hsigmoid_nodes("f2", "g", "onnx" if gate == "hsigmoid" else "clip", **kw)
        nodes, inits = nodes + n, inits + i
    nodes.append(helper.make_node("Mul", ["input", "g"], ["output"]))
    return model(nodes, inits)


@pytest.mark.structure
@pytest.mark.parametrize("fc, gate", [("conv", "hsigmoid"), ("conv", "sigmoid"), ("conv", "clip"),
                                      ("matmul", "hsigmoid")])
def test_se_forms_fuse_into_one_function(fc, gate):
    report = inspect_model(se_graph(fc, gate)).report
    assert report.matched == {"mobilec.se": 1}, report.to_dict()


@pytest.mark.structure
def test_se_with_hswish_between_fcs_fuses():
    report = inspect_model(se_graph(act="hswish")).report
    assert report.matched == {"mobilec.se": 1}, report.to_dict()


@pytest.mark.structure
def test_se_with_an_unknown_activation_is_a_near_miss():
    report = inspect_model(se_graph(act="hswish7")).report
    assert "mobilec.se" not in report.matched
    assert any("activation is none of" in r["reason"] for r in report.refused), report.refused


@pytest.mark.structure
def test_height_pool_is_not_se():
    report = inspect_model(se_graph(pool="height")).report
    assert "mobilec.se" not in report.matched
    assert any("spatial" in r["reason"] for r in report.refused), report.refused


@pytest.mark.structure
def test_bad_gate_is_not_se():
    report = inspect_model(se_graph(gate="clip", div=7.0)).report
    assert "mobilec.se" not in report.matched
    assert any(r["pattern"] == "mobilec.se" and "h-sigmoid" in r["reason"] for r in report.refused)


@pytest.mark.build
@pytest.mark.parametrize("fc, gate", [("conv", "hsigmoid"), ("matmul", "sigmoid")])
def test_se_numerics(fc, gate, tmp_path):
    res = assert_matches_onnxruntime(se_graph(fc, gate), tmp_path)
    assert res.report.matched == {"mobilec.se": 1}
