"""Importing ONNX: every bad input is an error naming the file, the node and the fix."""

import pytest
import torch
from onnx import helper
from torch import nn
from torch.nn import functional as F

from graphs import C, HW, conv
from mobilec.compiler import ModelImportError, import_onnx, parse_shape

pytestmark = pytest.mark.structure


def test_missing_truncated_and_foreign_files(tmp_path, exported):
    with pytest.raises(ModelImportError, match="nope.onnx: no such file"):
        import_onnx(tmp_path / "nope.onnx")
    data = exported("mobilenet_v3_small").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelImportError, match="cut.onnx"):
        import_onnx(tmp_path / "cut.onnx")
    (tmp_path / "photo.onnx").write_bytes(b"\xff\xd8\xff\xe0 a JPEG really")
    with pytest.raises(ModelImportError, match="photo.onnx"):
        import_onnx(tmp_path / "photo.onnx")


def test_every_unsupported_op_is_named_once():
    nodes = [helper.make_node("Relu", ["input"], ["a"]),
             helper.make_node("Frobnicate", ["a"], ["b"], name="weird1", domain=""),
             helper.make_node("Zorch", ["b"], ["output"], name="weird2", domain="")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", 1, [1, 4])],
                          [helper.make_tensor_value_info("output", 1, [1, 4])])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelImportError) as e:
        import_onnx(proto)
    assert "weird1 (Frobnicate)" in str(e.value) or "Frobnicate" in str(e.value)
    assert "Zorch" in str(e.value)


class DropoutInTraining(nn.Module):
    def forward(self, x):
        return F.dropout(x, 0.5, training=True)


def test_training_mode_dropout_is_refused(tmp_path):
    path = tmp_path / "drop.onnx"
    torch.onnx.export(DropoutInTraining(), (torch.randn(1, 4),), str(path), dynamo=False,
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    with pytest.raises(ModelImportError, match="eval mode"):
        import_onnx(path)


def dynamic_model():
    n, i = conv("input", "output")
    g = helper.make_graph(n, "g", [helper.make_tensor_value_info("input", 1, ["batch", C, HW, HW])],
                          [helper.make_tensor_value_info("output", 1, ["batch", C, HW, HW])], initializer=i)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_dynamic_dims_need_an_input_shape():
    with pytest.raises(ModelImportError, match=r"--input-shape input=Nx8x10x10"):
        import_onnx(dynamic_model())
    m = import_onnx(dynamic_model(), {"input": (2, C, HW, HW)})
    assert m.inputs[0].shape == (2, C, HW, HW) and m.outputs[0].shape == (2, C, HW, HW)
    with pytest.raises(ModelImportError, match="rank 4"):
        import_onnx(dynamic_model(), {"input": (2, C)})
    with pytest.raises(ModelImportError, match="inputs are"):
        import_onnx(dynamic_model(), {"image": (1, C, HW, HW)})


def test_parse_shape():
    assert parse_shape("input=1x3x224x224") == ("input", (1, 3, 224, 224))
    for bad in ("input", "input=", "=1x3", "input=1xAx3", "input=0x3"):
        with pytest.raises(ModelImportError, match="NAME="):
            parse_shape(bad)


def test_converter_hook_is_present():
    # mobilec.compiler.converters patches this private function of the pinned TVM frontend
    from tvm.relax.frontend.onnx import onnx_frontend

    assert "Clip" in onnx_frontend._get_convert_map()
