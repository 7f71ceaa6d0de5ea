"""Bilinear resizes as two 1-D passes (compiler/resize.py): every coordinate mode ONNX exporters
write, up and down, NCHW and NHWC, match onnxruntime; nearest and cubic keep TVM's resize; the
transpose of an upsampled map moves onto the smaller input."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from graphs import assert_matches_onnxruntime, conv, model


def _resize(size, mode="half_pixel", method="linear", cin=5, hw=8, nhwc=False, with_conv=False):
    inits = [helper.make_tensor("sizes", TensorProto.INT64, [4], [1, cin, *size])]
    nodes = []
    x = "input"
    if nhwc:  # the tf2onnx form: transposed in and out around NCHW ops
        nodes.append(helper.make_node("Transpose", [x], ["t"], perm=[0, 3, 1, 2]))
        x = "t"
    if with_conv:
        conv_nodes, conv_inits = conv(x, "c", cin=cin, cout=cin, k=3)
        nodes += conv_nodes
        inits += conv_inits
        x = "c"
    out = "r" if nhwc else "output"
    nodes.append(helper.make_node("Resize", [x, "", "", "sizes"], [out], mode=method,
                                  coordinate_transformation_mode=mode))
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["r"], ["output"], perm=[0, 2, 3, 1]))
    shape_in = (1, hw, hw, cin) if nhwc else (1, cin, hw, hw)
    shape_out = (1, *size, cin) if nhwc else (1, cin, *size)
    return model(nodes, inits, inputs=(("input", shape_in),), output=("output", shape_out), opset=13)


@pytest.mark.build
@pytest.mark.parametrize("mode", ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"])
@pytest.mark.parametrize("size", [(64, 64), (5, 13), (1, 3)], ids=["up8x", "down-odd", "to-one"])
def test_bilinear_resize_is_separable_and_matches_onnxruntime(mode, size, tmp_path):
    if mode == "align_corners" and 1 in size:
        pytest.xfail("TVM's FoldConstant legalizes every resize with TVM's own formula, which divides "
                     "by zero for align_corners to size 1 (the two-pass kernel handles it)")
    res = assert_matches_onnxruntime(_resize(size, mode), tmp_path)
    assert res.manifest.default_schedules.get("resize") == 1, res.manifest.default_schedules


@pytest.mark.build
@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "nhwc"])
def test_upsample_after_conv_is_transposed_at_the_small_map_and_matches(nhwc, tmp_path):
    from mobilec.compiler.importer import import_onnx
    from mobilec.compiler.pipeline import PipelineOptions, run_until
    from mobilec.targets import resolve

    proto = _resize((40, 40), with_conv=True, nhwc=nhwc)
    assert_matches_onnxruntime(proto, tmp_path)
    fused = run_until(import_onnx(proto, {}).mod, resolve("host", None, 2).tvm_target(), PipelineOptions(), "fuse")
    script = fused["main"].script()
    resize = script.index("R.image.resize2d(")
    if nhwc:  # NHWC in and out: the network's own layout, no transpose left at all
        assert "R.permute_dims(" not in script
    else:  # the conv ran in NHWC; back to NCHW before the 5x upsample, not after it
        assert script.rindex("R.permute_dims(") < resize, script
        assert 'layout="NCHW"' in script[resize:]


@pytest.mark.build
@pytest.mark.parametrize("method", ["nearest", "cubic"])
def test_other_resize_methods_keep_tvms_lowering(method, tmp_path):
    res = assert_matches_onnxruntime(_resize((16, 12), "asymmetric" if method == "nearest" else "half_pixel",
                                             method=method), tmp_path)
    assert "resize" not in res.manifest.default_schedules


@pytest.mark.structure
def test_taps_clamp_to_the_border_like_onnxruntime():
    """The coordinate arithmetic alone, against the formula ONNX documents (half_pixel, 4 -> 8)."""
    import tvm
    from tvm import te

    from mobilec.compiler.resize import separable_resize

    data = te.placeholder((1, 1, 1, 4), name="data")
    out = separable_resize(data, 1, 8, "NCHW", "half_pixel")
    f = tvm.compile(te.create_prim_func([data, out]), target="llvm")
    x = np.array([[[[1.0, 2.0, 4.0, 8.0]]]], dtype=np.float32)
    y = tvm.runtime.tensor(np.zeros((1, 1, 1, 8), np.float32))
    f(tvm.runtime.tensor(x), y)
    src = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3)
    want = np.interp(src, np.arange(4), x[0, 0, 0])
    np.testing.assert_allclose(y.numpy()[0, 0, 0], want, rtol=1e-6)
