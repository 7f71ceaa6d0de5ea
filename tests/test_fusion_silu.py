"""SiLU (x * sigmoid(x)) in every operand order, as a conv epilogue and alone; the SE block with a
SiLU between its FCs and a sigmoid gate (EfficientNet); sigmoid, tanh, erf and softmax lowered as
polynomials (no call of libm's exp per lane), matching onnxruntime."""

import pytest
import tvm
from onnx import helper

from graphs import assert_matches_onnxruntime, chain, conv, model, newer_kinds, silu_nodes
from mobilec.compiler import inspect_model
from mobilec.compiler.pipeline import PipelineOptions, run_until
from mobilec.targets import resolve


def conv_silu(gate_first=False):
    return model(*chain(conv("input", "c"), silu_nodes("c", "output", gate_first)))


def standalone_silu():
    add = helper.make_node("Add", ["input", "input"], ["s"])  # not a conv: the standalone rule
    n, i = silu_nodes("s", "output")
    return model([add] + n, i)


def se_silu():
    """EfficientNet's SE: pool -> FC -> SiLU -> FC -> sigmoid -> x * gate."""
    n, i = chain(([helper.make_node("GlobalAveragePool", ["input"], ["pool"])], []),
                 conv("pool", "fc1", 8, 4, k=1, seed=1), silu_nodes("fc1", "act"),
                 conv("act", "fc2", 4, 8, k=1, seed=2),
                 ([helper.make_node("Sigmoid", ["fc2"], ["gate"]),
                   helper.make_node("Mul", ["input", "gate"], ["output"])], []))
    return model(n, i)


def transcendental(op, **attrs):
    return model([helper.make_node(op, ["input"], ["output"], **attrs)], [])


@pytest.mark.structure
@pytest.mark.parametrize("gate_first", [False, True])
def test_conv_silu_fuses(gate_first):
    report = inspect_model(conv_silu(gate_first)).report
    assert report.matched == {"mobilec.conv2d_bias_silu": 1}, report.to_dict()
    assert report.totals == {"silu": 1}


@pytest.mark.structure
def test_standalone_silu_fuses():
    assert inspect_model(standalone_silu()).report.matched == {"mobilec.silu": 1}


@pytest.mark.structure
def test_se_with_silu_and_sigmoid_gate_fuses():
    report = inspect_model(se_silu()).report
    assert report.matched == {"mobilec.se": 1}, report.to_dict()


@pytest.mark.structure
@pytest.mark.parametrize("graph", [conv_silu, se_silu, lambda: transcendental("Tanh"),
                                   lambda: transcendental("Erf"), lambda: transcendental("Softmax", axis=1)],
                         ids=["conv-silu", "se-silu", "tanh", "erf", "softmax"])
def test_no_libm_exp_left(graph):
    """Lowered, no kernel calls exp, tanh, erf or sigmoid: each is arithmetic LLVM vectorises."""
    from mobilec.compiler.importer import import_onnx

    target = resolve("host").tvm_target()
    mod = run_until(import_onnx(graph(), {}).mod, target, PipelineOptions(), "lower")
    text = "\n".join(f.script() for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    assert "T.max" in text or "T.Select" in text or "T.reinterpret" in text  # the kernels are there
    left = [f"T.{name}(" for name in ("exp", "tanh", "erf", "sigmoid") if f"T.{name}(" in text]
    assert not left, left


@pytest.mark.build
def test_newer_kinds_together_match_onnxruntime(tmp_path):
    res = assert_matches_onnxruntime(newer_kinds(), tmp_path)
    assert res.report.totals == {"silu": 2, "se": 1}, res.report.totals
    assert "unscheduled" not in res.manifest.default_schedules


@pytest.mark.build
@pytest.mark.parametrize("graph", [conv_silu, standalone_silu, se_silu, lambda: transcendental("Sigmoid"),
                                   lambda: transcendental("Tanh"), lambda: transcendental("Erf"),
                                   lambda: transcendental("Softmax", axis=1)],
                         ids=["conv-silu", "silu", "se-silu", "sigmoid", "tanh", "erf", "softmax"])
def test_numerics(graph, tmp_path):
    assert_matches_onnxruntime(graph(), tmp_path)
