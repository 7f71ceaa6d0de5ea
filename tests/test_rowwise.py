"""Row-wise kernels (softmax, layer norm: reductions along the innermost axis): classified as such,
each row done by one thread with vectorised partial reductions, the exponentials computed once,
matching onnxruntime."""

import numpy as np
import pytest
from onnx import helper

from graphs import assert_matches_onnxruntime, const, model

SHAPE = (1, 4, 64, 64)  # an attention map: heads x queries x keys


def softmax():
    return model([helper.make_node("Softmax", ["input"], ["output"], axis=-1)], [], inputs=[("input", SHAPE)],
                 output=("output", SHAPE))


def layer_norm(width=48):
    rng = np.random.default_rng(0)
    shape = (1, 50, width)
    return model([helper.make_node("LayerNormalization", ["input", "g", "b"], ["output"], axis=-1)],
                 [const("g", rng.standard_normal(width)), const("b", rng.standard_normal(width))],
                 inputs=[("input", shape)], output=("output", shape))


def sum_of_squares():
    """A reduction that is the kernel's output (EdgeNeXt's L2 norms): its partial results' sum
    cannot be vectorised, the rest can."""
    axes = helper.make_tensor("axes", 7, [1], [-1])
    return model([helper.make_node("Mul", ["input", "input"], ["sq"]),
                  helper.make_node("ReduceSum", ["sq", "axes"], ["output"], keepdims=1)], [axes],
                 inputs=[("input", SHAPE)], output=("output", SHAPE[:-1] + (1,)))


def _kernels(proto):
    import tvm
    from tvm.s_tir import Schedule

    from mobilec.compiler.importer import import_onnx
    from mobilec.compiler.pipeline import PipelineOptions, run_until
    from mobilec.schedules.defaults import schedule_kernel
    from mobilec.schedules.kinds import classify
    from mobilec.targets import cpu_params, resolve

    target = resolve("x86_64-linux-gnu", "core-avx2").tvm_target()
    mod = run_until(import_onnx(proto).mod, target, PipelineOptions(), "lower")
    return [(classify(Schedule(tvm.IRModule({"main": f}))).kind.value, schedule_kernel(f, cpu_params(target))[0].script())
            for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


@pytest.mark.structure
@pytest.mark.parametrize("graph", [softmax, layer_norm, sum_of_squares])
def test_row_reductions_are_rowwise_kernels_with_vector_partial_results(graph):
    kernels = [text for kind, text in _kernels(graph()) if kind == "rowwise"]
    assert len(kernels) == 1, [kind for kind, _ in _kernels(graph())]
    text = kernels[0]
    assert "T.parallel" in text and "_rf" in text and "T.vectorized" in text, text


@pytest.mark.structure
def test_softmax_computes_each_exponential_once():
    text = next(text for kind, text in _kernels(softmax()) if kind == "rowwise")
    assert text.count("T.reinterpret") == 1, text  # fast_exp's 2^n, once: stored, then summed and divided


@pytest.mark.build
@pytest.mark.parametrize("graph", [softmax, layer_norm, lambda: layer_norm(20), sum_of_squares],
                         ids=["softmax", "layer-norm", "layer-norm-20", "sum-of-squares"])
def test_numerics(graph, tmp_path):
    res = assert_matches_onnxruntime(graph(), tmp_path)
    assert res.manifest.default_schedules.get("rowwise") == 1, res.manifest.default_schedules
