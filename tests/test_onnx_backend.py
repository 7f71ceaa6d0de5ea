"""ONNX's own backend node cases, compiled for the host and run with mobilec.runtime.

The cases are those the onnx package ships as ``onnx/backend/test/data/node/<case>``: built here by
``onnx.backend.test.case.node.collect_testcases`` (the generator of those files; the installed
wheel does not carry the files), with numpy seeded. Every case either matches ONNX's expected
outputs or is refused at compile time by a one-line ``ModelImportError`` naming the node and the
reason: never a raw TVM error, never other numbers.

The backend cases pass shapes, axes, pads, scales and sizes as graph inputs, which a static-shape
compiler refuses; the ``frozen`` cases make those operands initializers (their test values) so
that the static paths of the same operators are checked against ONNX's numbers too.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mobilec.compiler import ModelImportError, compile_model
from mobilec.compiler.importer import STATIC_OPERANDS

pytestmark = pytest.mark.build

MATCH = [
    # convolutions
    "test_basic_conv_without_padding", "test_conv_with_strides_padding", "test_conv_with_strides_and_asymmetric_padding",
    "test_conv_with_autopad_same", "test_convtranspose", "test_convtranspose_output_shape",
    "test_convtranspose_autopad_same", "test_convtranspose_group_2", "test_convtranspose_dilations",
    "test_batchnorm_example", "test_batchnorm_epsilon",
    # activations, Clip in all its forms (bounds as 0-d graph inputs, one bound, none)
    "test_relu", "test_sigmoid", "test_hardswish", "test_hardsigmoid", "test_hardsigmoid_default",
    "test_clip", "test_clip_splitbounds", "test_clip_default_min", "test_clip_default_max", "test_clip_default_inbounds",
    # broadcasting arithmetic
    "test_add_bcast", "test_mul_bcast", "test_sub_bcast", "test_div_bcast", "test_min_two_inputs", "test_max_example",
    # pooling
    "test_globalaveragepool", "test_averagepool_2d_pads_count_include_pad", "test_averagepool_2d_same_upper",
    "test_averagepool_2d_ceil", "test_maxpool_2d_same_lower", "test_maxpool_2d_dilations", "test_maxpool_2d_ceil",
    # Gemm: scalar (0-d) and one-element bias broadcast, transposes, alpha/beta
    "test_gemm_default_scalar_bias", "test_gemm_default_single_elem_vector_bias", "test_gemm_default_no_bias",
    "test_gemm_transposeA", "test_gemm_beta", "test_gemm_all_attributes",
    # layout and the rest of a classifier head
    "test_matmul_4d", "test_flatten_axis2", "test_transpose_all_permutations_3", "test_concat_3d_axis_negative_1",
    "test_softmax_axis_1", "test_dropout_default_mask_ratio", "test_identity",
]

REFUSE = {
    "test_batchnorm_example_training_mode": r"BatchNormalization -> y\. Export the model in eval mode",
    "test_training_dropout": r"Dropout -> y training_mode\. Export the model in eval mode",
    "test_resize_upsample_scales_nearest": r"Resize -> Y takes its scales from the graph input 'scales'.*initializers",
    "test_resize_downsample_sizes_linear_pytorch_half_pixel": r"Resize -> Y takes its sizes from the graph input 'sizes'",
    "test_reshape_negative_dim": r"Reshape -> reshaped takes its shape from the graph input 'shape'",
    "test_reduce_mean_keepdims_random": r"ReduceMean -> reduced takes its axes from the graph input 'axes'",
    "test_unsqueeze_axis_1": r"Unsqueeze -> y takes its axes",
    "test_squeeze": r"Squeeze -> y takes its axes",
    "test_constant_pad": r"Pad -> y takes its pads .*Pad -> y takes its constant_value",
    "test_slice": r"Slice -> y takes its starts",
    "test_maxpool_with_argmax_2d_precomputed_pads": r"MaxPool",
}

FROZEN_MATCH = [
    "test_resize_upsample_scales_nearest", "test_resize_downsample_scales_nearest",  # 0.6: gathered exactly
    "test_resize_upsample_sizes_nearest",  # 2 -> 7 pixels: exact ties that TVM's float32 resize breaks
    "test_resize_upsample_sizes_nearest_not_larger", "test_resize_upsample_scales_nearest_axes_3_2",
    "test_resize_upsample_sizes_nearest_floor_align_corners", "test_resize_upsample_scales_linear",
    "test_resize_upsample_scales_linear_align_corners", "test_resize_upsample_scales_cubic",
    "test_resize_tf_crop_and_resize",
    "test_reshape_negative_dim", "test_reduce_mean_keepdims_random", "test_unsqueeze_axis_1", "test_squeeze",
    "test_constant_pad", "test_reflect_pad", "test_slice",
]

FROZEN_REFUSE = {
    "test_resize_downsample_scales_linear": r"Resize -> Y: scale 0\.6 on a dim of 2 gives 1\.2 pixels.*give sizes",
    "test_resize_upsample_scales_linear_half_pixel_symmetric": r"Resize -> Y: coordinate_transformation_mode "
                                                               r"'half_pixel_symmetric' is not supported",
}


@functools.lru_cache(maxsize=1)
def node_cases() -> dict:
    from onnx.backend.test.case.node import collect_testcases

    state = np.random.get_state()
    np.random.seed(0)  # the generators draw their inputs from numpy's global generator
    try:
        with np.errstate(all="ignore"):
            return {c.name: c for c in collect_testcases()}
    finally:
        np.random.set_state(state)


def _array(x):
    return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)


def load_case(name: str, frozen: bool = False):
    """(model, feeds, expected outputs, rtol, atol); ``frozen``: static operands become initializers."""
    case = node_cases()[name]
    model = onnx.ModelProto.FromString(case.model.SerializeToString())
    inputs, outputs = case.data_sets[0]
    values = {i.name: _array(x) for i, x in zip(model.graph.input, inputs)}
    if frozen:
        static = {n.input[k] for n in model.graph.node for k in STATIC_OPERANDS.get(n.op_type, {})
                  if k < len(n.input) and n.input[k]}
        assert static & set(values), f"{name}: nothing to freeze"
        kept = [i for i in model.graph.input if i.name not in static]
        model.graph.initializer.extend(numpy_helper.from_array(values.pop(n), n) for n in static if n in values)
        del model.graph.input[:]
        model.graph.input.extend(kept)
    return model, values, [_array(o) for o in outputs], case.rtol, case.atol


def check(name: str, tmp_path, frozen: bool = False):
    import mobilec.runtime as mr

    model, feeds, want, rtol, atol = load_case(name, frozen)
    got = mr.load(compile_model(model, tmp_path / "case.so").library).run(feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=max(atol, 1e-6))


def refused(name: str, tmp_path, pattern: str, frozen: bool = False):
    model, *_ = load_case(name, frozen)
    with pytest.raises(ModelImportError) as e:
        compile_model(model, tmp_path / "case.so")
    message = str(e.value)
    assert "\n" not in message, message
    assert re.search(pattern, message), message


@pytest.mark.parametrize("name", MATCH)
def test_matches_onnx(name, tmp_path):
    check(name, tmp_path)


@pytest.mark.parametrize("name", sorted(REFUSE))
def test_refused_at_compile_time(name, tmp_path):
    refused(name, tmp_path, REFUSE[name])


@pytest.mark.parametrize("name", FROZEN_MATCH)
def test_static_operands_match_onnx(name, tmp_path):
    check(name, tmp_path, frozen=True)


@pytest.mark.parametrize("name", sorted(FROZEN_REFUSE))
def test_static_operands_refused(name, tmp_path):
    refused(name, tmp_path, FROZEN_REFUSE[name], frozen=True)


def test_clip_override_matches_onnxruntime(tmp_path):
    # the Clip(0, 6) that test_importer.py sees imported as R.clip computes ONNX's numbers
    from graphs import assert_matches_onnxruntime, hsigmoid_nodes, model

    nodes, inits = hsigmoid_nodes("input", "output", "clip")
    assert_matches_onnxruntime(model(nodes, inits), tmp_path, rtol=1e-6)
