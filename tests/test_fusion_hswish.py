"""h-swish in every exporter's form fuses into the conv epilogue; near misses do not."""

import pytest

from graphs import assert_matches_onnxruntime, conv, hswish_nodes, model
from mobilec.compiler import inspect_model

FORMS = ["onnx", "hardsigmoid", "clip/div", "clip/mul", "clip/div_first", "minmax/div", "relu_min/mul"]


def conv_hswish(form, **kw):
    n1, i1 = conv("input", "c")
    n2, i2 = hswish_nodes("c", "output", form, **kw)
    return model(n1 + n2, i1 + i2)


@pytest.mark.structure
@pytest.mark.parametrize("form", FORMS)
def test_every_form_fuses_into_the_conv(form):
    report = inspect_model(conv_hswish(form)).report
    assert report.matched == {"mobilec.conv2d_bias_hswish": 1}, report.to_dict()
    assert report.refused == []


@pytest.mark.structure
def test_standalone_hswish_after_a_non_conv_op():
    from onnx import helper

    add = helper.make_node("Add", ["input", "input"], ["s"])
    n, i = hswish_nodes("s", "output", "clip/mul")
    report = inspect_model(model([add] + n, i)).report
    assert report.matched == {"mobilec.hswish": 1}


@pytest.mark.structure
@pytest.mark.parametrize("kw, constant", [({"hi": 5.0}, "5.0"), ({"div": 7.0}, "7.0"), ({"add": 2.0}, "2.0")])
def test_near_misses_are_refused_with_a_reason(kw, constant):
    report = inspect_model(conv_hswish("clip/div", **kw)).report
    assert "mobilec.conv2d_bias_hswish" not in report.matched
    reasons = [r["reason"] for r in report.refused if "hswish" in r["pattern"]]
    assert reasons and "h-swish" in reasons[0] and constant in reasons[0], report.refused


@pytest.mark.build
@pytest.mark.parametrize("form", ["onnx", "clip/mul", "minmax/div", "hardsigmoid"])
def test_fused_numerics_match_onnxruntime(form, tmp_path):
    res = assert_matches_onnxruntime(conv_hswish(form), tmp_path)
    assert res.report.matched == {"mobilec.conv2d_bias_hswish": 1}


@pytest.mark.build
def test_near_miss_still_computes_correctly(tmp_path):
    assert_matches_onnxruntime(conv_hswish("clip/div", hi=5.0), tmp_path)
