"""h-sigmoid standalone (outside SE): ONNX HardSigmoid and relu6(x+3)/6; near misses refused."""

import pytest
from onnx import helper

from graphs import assert_matches_onnxruntime, hsigmoid_nodes, model
from mobilec.compiler import inspect_model


def graph(form, **kw):
    add = helper.make_node("Add", ["input", "input"], ["s"])  # not a conv: the standalone rule
    n, i = hsigmoid_nodes("s", "output", form, **kw)
    return model([add] + n, i)


@pytest.mark.structure
@pytest.mark.parametrize("form", ["onnx", "clip"])
def test_forms_fuse(form):
    report = inspect_model(graph(form)).report
    assert report.matched == {"mobilec.hsigmoid": 1}, report.to_dict()


@pytest.mark.structure
def test_near_miss_divide_by_7():
    report = inspect_model(graph("clip", div=7.0)).report
    assert report.matched == {}
    assert any("h-sigmoid" in r["reason"] and "7.0" in r["reason"] for r in report.refused), report.refused


@pytest.mark.build
@pytest.mark.parametrize("form", ["onnx", "clip"])
def test_numerics(form, tmp_path):
    assert_matches_onnxruntime(graph(form), tmp_path)
