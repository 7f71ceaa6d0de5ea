"""Importing ONNX: every bad input is an error naming the file, the node and the fix."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from torch.nn import functional as F

from graphs import C, HW, const, conv, hsigmoid_nodes, model
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
    assert "2 nodes use operators" in str(e.value)
    assert "weird1 (Frobnicate), weird2 (Zorch)" in str(e.value)
    assert str(e.value).count("Frobnicate") == 1 and "Relu" not in str(e.value)


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


def test_clip_override_takes_effect():
    # mobilec.compiler.converters replaces TVM's Clip (call_tir maximum/minimum) with R.clip, which
    # the h-swish/ReLU6 fusions match; the numbers are checked in test_onnx_backend.py
    nodes, inits = hsigmoid_nodes("input", "output", "clip")
    script = import_onnx(model(nodes, inits)).mod.script()
    assert "R.clip(" in script and "call_tir" not in script, script


def batchnorm(opset: int, outputs=("output",), **attrs):
    inits = [const(n, np.full(C, v)) for n, v in (("s", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0))]
    node = helper.make_node("BatchNormalization", ["input", "s", "b", "m", "v"], list(outputs), name="bn1", **attrs)
    return model([node], inits, opset=opset)


def test_training_mode_batchnorm_is_refused():
    # one output, training_mode=1: used to reach onnxruntime's optimiser and crash with its traceback
    with pytest.raises(ModelImportError, match=r"<ModelProto>: BatchNormalization in training mode .*: bn1 "
                                               r"\(BatchNormalization\)\. Export the model in eval mode"):
        import_onnx(batchnorm(15, training_mode=1))
    # three outputs (running mean and variance): imported with inference maths, 10.0 off
    with pytest.raises(ModelImportError, match="bn1 \\(BatchNormalization\\).*eval mode"):
        import_onnx(batchnorm(15, ("output", "rm", "rv"), training_mode=1))
    import_onnx(batchnorm(15, training_mode=0))
    import_onnx(batchnorm(9))


def test_onnxruntime_failures_are_one_line_errors():
    # passes the ONNX checker, but onnxruntime (which folds constants) rejects the shapes
    proto = model([helper.make_node("Add", ["input", "b"], ["output"], name="add1")], [const("b", np.ones((1, 3)))],
                  inputs=(("input", (1, 4)),), output=("output", (1, 4)))
    with pytest.raises(ModelImportError) as e:
        import_onnx(proto)
    assert str(e.value).startswith("<ModelProto>: onnxruntime, which folds the graph's constant shape arithmetic, "
                                   "cannot load it: [ONNXRuntimeError]")
    assert "Node (add1) Op (Add)" in str(e.value) and "\n" not in str(e.value)


def test_shape_operands_from_graph_inputs_are_refused_by_name():
    # a Reshape whose shape is computed from a graph input: named with the input it comes from
    nodes = [helper.make_node("Cast", ["dims"], ["dims64"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["input", "dims64"], ["output"], name="r1")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", 1, [1, 4]),
                                       helper.make_tensor_value_info("dims", 1, [2])],
                          [helper.make_tensor_value_info("output", 1, [2, 2])])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelImportError, match=r"r1 \(Reshape\) takes its shape from the value computed from a "
                                               r"graph input 'dims64'.*make them initializers"):
        import_onnx(proto)
    # the same shape computed from Shape(input) is static once the input shape is fixed
    nodes = [helper.make_node("Shape", ["input"], ["s"]),
             helper.make_node("Reshape", ["input", "s"], ["output"], name="r1")]
    m = import_onnx(model(nodes, [], inputs=(("input", (1, 4)),), output=("output", (1, 4))))
    assert m.outputs[0].shape == (1, 4)


def test_unsupported_input_dtypes_and_empty_tensors_are_refused():
    g = helper.make_graph([helper.make_node("Cast", ["input"], ["output"], to=TensorProto.FLOAT)], "g",
                          [helper.make_tensor_value_info("input", TensorProto.BFLOAT16, [1, 4])],
                          [helper.make_tensor_value_info("output", 1, [1, 4])])
    with pytest.raises(ModelImportError, match="input 'input' has element type BFLOAT16; mobilec takes inputs of bool"):
        import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    g = helper.make_graph([helper.make_node("Cast", ["input"], ["output"], to=TensorProto.FLOAT8E4M3FN, name="c8")],
                          "g", [helper.make_tensor_value_info("input", 1, [1, 4])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT8E4M3FN, [1, 4])])
    with pytest.raises(ModelImportError, match=r"casts to element types mobilec does not compile: c8 \(Cast\) to "
                                               r"FLOAT8E4M3FN"):  # used to fail inside TVM's code generation
        import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]))
    with pytest.raises(ModelImportError, match=r"tensor 'input' has shape \[1, 0\], with no elements"):
        import_onnx(model([helper.make_node("Relu", ["input"], ["output"])], [], inputs=(("input", (1, 0)),),
                          output=("output", (1, 0))))


def test_converter_failures_name_the_node():
    # TVM's MaxPool converter has no indices output: its failure becomes one line naming the op
    nodes = [helper.make_node("MaxPool", ["input"], ["output", "idx"], kernel_shape=[2, 2], name="pool1")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", 1, [1, C, HW, HW])],
                          [helper.make_tensor_value_info("output", 1, [1, C, HW // 2, HW // 2]),
                           helper.make_tensor_value_info("idx", TensorProto.INT64, [1, C, HW // 2, HW // 2])])
    with pytest.raises(ModelImportError, match="TVM's ONNX importer failed: .*MaxPool"):
        import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    # a Resize TVM would compute differently (scale 0.75 on 10 pixels is 7.5): named, with the fix
    nodes = [helper.make_node("Resize", ["input", "", "scales"], ["output"], name="up1", mode="linear")]
    proto = model(nodes, [const("scales", [1, 1, 0.75, 0.75])], output=("output", (1, C, 7, 7)))
    with pytest.raises(ModelImportError, match=r"TVM cannot import node up1 \(Resize\): scale 0.75 on a dim of 10 "
                                               r"gives 7.5 pixels.*give sizes"):
        import_onnx(proto)


def test_a_failed_import_leaves_no_builder_warning(capfd):
    # TVM's builder, destroyed with blocks open, printed a warning after mobilec's error line
    import gc

    nodes = [helper.make_node("Conv", ["input", "w"], ["output"], name="conv1", pads=[1, 1, 1, 1])]
    proto = model(nodes, [const("w", np.zeros((C, C + 1, 3, 3)))], output=("output", (1, C, HW, HW)))
    with pytest.raises(ModelImportError, match=r"TVM cannot import node conv1 \(Conv\): The channel size"):
        import_onnx(proto)
    gc.collect()
    assert "BlockBuilder destroyed" not in capfd.readouterr().err


def test_text_that_is_not_utf8_is_refused_naming_the_field(tmp_path):
    from graphs import tiny

    proto = tiny()
    proto.graph.node[0].name = "CONVNAMEX"
    path = tmp_path / "bad.onnx"
    path.write_bytes(proto.SerializeToString().replace(b"CONVNAMEX", b"CONV\xff\xfeMEX"))
    with pytest.raises(ModelImportError, match=r"bad.onnx: .*node\[0\]'s name is not UTF-8 text"):
        import_onnx(path)


def test_a_tensor_past_32_bit_indexing_is_refused_naming_it():
    big = model([helper.make_node("Relu", ["input"], ["output"])], [], inputs=[("input", (1, 8, 40000, 40000))],
                output=("output", (1, 8, 40000, 40000)))
    with pytest.raises(ModelImportError, match=r"tensor 'input' of shape 1x8x40000x40000 has 12,800,000,000 elements"):
        import_onnx(big)
