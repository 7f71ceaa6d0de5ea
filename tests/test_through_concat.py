"""Channel-wise ops after a concatenation moved onto its parts (through_concat.py), batch norms no
exporter folded folded into the convolutions (fold_affine.py), and the concatenation's per-input
copy loops (concat.py): MixNet's blocks, structure and numerics against onnxruntime."""

import numpy as np
import pytest
import tvm
from onnx import helper, numpy_helper

from graphs import C, assert_matches_onnxruntime, chain, const, conv, model, silu_nodes
from mobilec.compiler import inspect_model


def split(x: str, outs: list[str], sizes: list[int]):
    name = f"{outs[0]}_sizes"
    return ([helper.make_node("Split", [x, name], outs, axis=1)],
            [numpy_helper.from_array(np.asarray(sizes, np.int64), name)])


def batch_norm(x: str, out: str, c: int = C, seed: int = 3):
    rng = np.random.default_rng(seed)
    names = [f"{out}_{p}" for p in ("gamma", "beta", "mean", "var")]
    values = [rng.uniform(0.5, 1.5, c), rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.5, 2, c)]
    return [helper.make_node("BatchNormalization", [x] + names, [out])], [const(n, v) for n, v in zip(names, values)]


def concat(parts: list[str], out: str):
    return [helper.make_node("Concat", parts, [out], axis=1)], []


def mixed_depthwise(x: str, out: str, seed: int = 0):
    """MixNet's mixed-kernel depthwise convolution: half the channels 3x3, half 5x5, then BN."""
    h = C // 2
    return chain(split(x, [f"{out}_a", f"{out}_b"], [h, h]),
                 conv(f"{out}_a", f"{out}_ca", h, h, k=3, group=h, seed=seed, bias=False),
                 conv(f"{out}_b", f"{out}_cb", h, h, k=5, group=h, seed=seed + 1, bias=False),
                 concat([f"{out}_ca", f"{out}_cb"], f"{out}_cat"), batch_norm(f"{out}_cat", out, seed=seed + 2))


def mixed_block():
    """mixed depthwise -> SiLU: the BN and the SiLU land on both convolutions."""
    return model(*chain(mixed_depthwise("input", "m"), silu_nodes("m", "output")))


def grouped_pointwise_twice():
    """MixNet's grouped 1x1 convolutions, twice: the second split cuts the first concatenation
    where it was joined, so the split and the concatenation cancel; and a residual add."""
    h = C // 2
    first = chain(split("input", ["a", "b"], [h, h]), conv("a", "ca", h, h, k=1, bias=False),
                  conv("b", "cb", h, h, k=1, seed=1, bias=False), concat(["ca", "cb"], "cat"), batch_norm("cat", "bn"))
    second = chain(split("bn", ["d", "e"], [h, h]), conv("d", "cd", h, h, k=1, seed=4, bias=False),
                   conv("e", "ce", h, h, k=1, seed=5, bias=False), concat(["cd", "ce"], "cat2"),
                   batch_norm("cat2", "bn2", seed=6), ([helper.make_node("Add", ["bn2", "bn"], ["output"])], []))
    return model(*chain(first, second))


def concat_read_twice():
    """A near miss: the concatenation is also an output's operand with a tensor of another
    split (input * 2): the ReLU moves, the concatenation stays for the multiply."""
    h = C // 2
    n, i = chain(split("input", ["a", "b"], [h, h]), conv("a", "ca", h, h, k=1), conv("b", "cb", h, h, k=1, seed=1),
                 concat(["ca", "cb"], "cat"),
                 ([helper.make_node("Relu", ["cat"], ["r"]), helper.make_node("Mul", ["cat", "input"], ["p"]),
                   helper.make_node("Add", ["r", "p"], ["output"])], []))
    return model(n, i)


def unfolded_bn():
    """conv -> BN (not folded by the exporter) -> ReLU: the BN into the weights."""
    return model(*chain(conv("input", "c", bias=False), batch_norm("c", "bn"),
                        ([helper.make_node("Relu", ["bn"], ["output"])], [])))


def _ops(graph) -> dict:
    """op name -> count in the main function after the fuse phase (fused kernels by their rule)."""
    mod = inspect_model(graph).mod
    counts = {}

    def visit(e):
        if isinstance(e, tvm.relax.Call):
            name = e.op.name if isinstance(e.op, tvm.ir.Op) else e.op.name_hint.rstrip("0123456789")
            counts[name] = counts.get(name, 0) + 1

    tvm.relax.analysis.post_order_visit(mod["main"].body, visit)
    return counts


@pytest.mark.structure
def test_batch_norm_and_silu_after_a_concatenation_fuse_into_its_convolutions():
    report = inspect_model(mixed_block()).report
    assert report.matched == {"mobilec.conv2d_bias_silu": 2}, report.to_dict()
    ops = _ops(mixed_block())
    assert not {"relax.subtract", "relax.divide", "relax.multiply", "relax.sigmoid"} & set(ops), ops
    assert ops["relax.concat"] == 1, ops


@pytest.mark.structure
def test_a_split_where_the_concatenation_joined_cancels():
    ops = _ops(grouped_pointwise_twice())
    assert ops.get("relax.split") == 1 and ops.get("relax.concat") == 1, ops  # the first split, the last concat
    report = inspect_model(grouped_pointwise_twice()).report
    assert report.matched == {"mobilec.conv2d_bias": 2, "mobilec.conv2d_bias_residual": 2}, report.to_dict()


@pytest.mark.structure
def test_a_concatenation_read_by_another_kind_of_op_stays():
    ops = _ops(concat_read_twice())
    assert ops.get("relax.concat") == 2 and ops.get("relax.multiply") == 1, ops  # cat for the multiply; relu's parts


@pytest.mark.structure
def test_an_unfolded_batch_norm_folds_into_the_convolution():
    report = inspect_model(unfolded_bn()).report
    assert report.matched == {"mobilec.conv2d_bias_relu": 1}, report.to_dict()
    assert not {"relax.subtract", "relax.divide"} & set(_ops(unfolded_bn()))


@pytest.mark.build
@pytest.mark.parametrize("graph", [mixed_block, grouped_pointwise_twice, concat_read_twice, unfolded_bn])
def test_moved_and_folded_graphs_match_onnxruntime(graph, tmp_path):
    assert_matches_onnxruntime(graph(), tmp_path)


@pytest.mark.structure
def test_concatenation_is_one_copy_loop_per_input():
    from mobilec.compiler.concat import concat_func

    text = concat_func([[1, 4, 4, 3], [1, 4, 4, 5], [1, 4, 4, 8]], 3, "float32").script()
    assert text.count("T.sblock(\"T_concat_") == 3 and "if_then_else" not in text
    assert "v3 + T.int64(3)" in text and "v3 + T.int64(8)" in text


@pytest.mark.build
@pytest.mark.parametrize("axis", [1, 2, 3])
def test_concatenation_along_any_axis_matches_onnxruntime(axis, tmp_path):
    """Three inputs of different extents along the axis (NCHW: no convolution, so no layout change)."""
    shapes = {n: [1, C, 6, 6] for n in ("x0", "x1", "x2")}
    for n, extent in zip(shapes, (2, 3, 5)):
        shapes[n][axis] = extent
    out = [1, C, 6, 6]
    out[axis] = 10
    m = model([helper.make_node("Concat", list(shapes), ["output"], axis=axis)], [],
              inputs=[(n, tuple(s)) for n, s in shapes.items()], output=("output", tuple(out)))
    assert_matches_onnxruntime(m, tmp_path)


@pytest.mark.structure
def test_a_division_by_zero_is_left_as_written_without_a_warning():
    """A per-channel divisor holding a zero (an infinity on purpose, or a damaged file): no
    folding, and no numpy warning printed at the user."""
    import warnings

    divisor = np.ones(C, np.float32)
    divisor[0] = 0.0
    graph = model(*chain(conv("input", "c", bias=False),
                         ([helper.make_node("Sub", ["c", "mean"], ["s"]), helper.make_node("Div", ["s", "d"], ["q"]),
                           helper.make_node("Mul", ["q", "g"], ["output"])],
                          [const("mean", np.full((C, 1, 1), 0.5)), const("d", divisor.reshape(C, 1, 1)),
                           const("g", np.full((C, 1, 1), 2.0))])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops = _ops(graph)
    assert "relax.divide" in ops, ops
