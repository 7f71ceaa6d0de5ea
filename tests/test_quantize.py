"""``mobilec quantize``: the QDQ file onnxruntime's tooling writes for us, its agreement report,
and bad input said in one line."""

import numpy as np
import onnx
import pytest
from onnx import helper

from graphs import C, conv, hswish_nodes, model
from mobilec.cli import main
from mobilec.compiler import inspect_model
from mobilec.frontends.quantize import QuantizeConfig, agreement, quantize_model


def block(tmp_path, name="block.onnx") -> str:
    """expand 1x1, ReLU, depthwise 3x3, h-swish (onnx's HardSwish), project 1x1, residual add."""
    e, ei = conv("input", "e", k=1)
    d, di = conv("er", "d", group=C, seed=1)
    h, hi = hswish_nodes("d", "h", "clip/div")  # a functional h-swish: Add, Clip, Mul, Div
    p, pi = conv("h", "p", k=1, seed=2)
    nodes = e + [helper.make_node("Relu", ["e"], ["er"])] + d + h + p + [helper.make_node("Add", ["input", "p"], ["output"])]
    path = tmp_path / name
    onnx.save(model(nodes, ei + di + hi + pi), path)
    return str(path)


@pytest.mark.structure
def test_quantize_writes_qdq_and_reports_agreement(tmp_path):
    res = quantize_model(block(tmp_path), tmp_path / "q.onnx", QuantizeConfig(random=4, held_out=2))
    q = onnx.load(str(res.path))
    onnx.checker.check_model(q)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") > 0 and "Relu" not in ops  # ReLU became the output range
    assert res.quantized == {"Conv": 3, "Add": 1}
    assert res.calibration_inputs == 4 and res.held_out == 2 and "random" in res.calibration
    assert 0.5 <= res.top1_agreement <= 1.0 and 0.9 < res.cosine <= 1.0
    # h-swish's "x + 3" is not quantised, so the fusion passes still see one h-swish
    report = inspect_model(str(res.path)).report
    assert report.totals.get("hswish") == 1, report.to_dict()
    # weights int8 symmetric per output channel: zero points 0, one scale per channel
    inits = {i.name: i for i in q.graph.initializer}
    weight_dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                 and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert weight_dq
    for n in weight_dq:
        zp = onnx.numpy_helper.to_array(inits[n.input[2]])
        assert not zp.any() and zp.size == onnx.numpy_helper.to_array(inits[n.input[1]]).size > 1


@pytest.mark.structure
def test_squeeze_excite_stays_float_and_fuses(tmp_path):
    """The SE block (pool, FC, ReLU, FC, h-sigmoid, gate) is left float by mobilec quantize, so the
    quantised model still has one SE kernel; its FCs are not quantised."""
    c, ci = conv("input", "c", k=1)
    f1, f1i = conv("p", "f1", cout=4, k=1, seed=1)
    f2, f2i = conv("f1r", "f2", cin=4, k=1, seed=2)
    g, gi = hswish_nodes("f2", "g", "onnx")  # any gate the SE rule accepts; here h-sigmoid's form
    nodes = c + [helper.make_node("GlobalAveragePool", ["c"], ["p"])] + f1 + [
        helper.make_node("Relu", ["f1"], ["f1r"])] + f2 + [
        helper.make_node("HardSigmoid", ["f2"], ["gate"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["c", "gate"], ["m"])]
    o, oi = conv("m", "output", k=1, seed=3)
    src = tmp_path / "se.onnx"
    onnx.save(model(nodes + o, ci + f1i + f2i + oi), src)
    res = quantize_model(src, tmp_path / "q.onnx", QuantizeConfig(random=3, held_out=1))
    assert res.quantized == {"Conv": 2}  # the two 1x1 convs around the block, not its FCs
    report = inspect_model(str(res.path)).report
    assert report.matched.get("mobilec.se") == 1, report.to_dict()


@pytest.mark.structure
def test_quantize_from_images(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "notes.txt").write_text("not an image")
    e, ei = conv("input", "output", cin=3, cout=C)
    src = tmp_path / "rgb.onnx"
    onnx.save(model(e, ei, inputs=(("input", (1, 3, 10, 10)),)), src)
    res = quantize_model(src, tmp_path / "q.onnx", QuantizeConfig(images=str(images), held_out=2))
    assert res.calibration_inputs == 4 and res.held_out == 1 and str(images) in res.calibration


@pytest.mark.structure
def test_quantize_cli(tmp_path, capsys):
    assert main(["quantize", block(tmp_path), "-o", str(tmp_path / "q.onnx"), "--random", "3", "--held-out", "1"]) == 0
    out = capsys.readouterr().out
    assert "calibrated on 3 seeded random inputs" in out and "3 Conv" in out and "top-1 agreement" in out
    assert (tmp_path / "q.onnx").exists()


@pytest.mark.structure
@pytest.mark.parametrize("case, message", [
    ("same-file", "the same file as the input"),
    ("not-onnx", "not a valid ONNX model"),
    ("no-images", "not a folder"),
    ("two-inputs", "2 graph inputs"),
    ("dynamic", "static NCHW shape"),
    ("quantised", "already quantised"),
])
def test_bad_input_is_one_line(case, message, tmp_path, capsys):
    src = block(tmp_path)
    args = ["quantize", src, "-o", str(tmp_path / "q.onnx")]
    if case == "same-file":
        args[3] = src
    elif case == "not-onnx":
        (tmp_path / "bad.onnx").write_text("not a model")
        args[1] = str(tmp_path / "bad.onnx")
    elif case == "quantised":
        quantize_model(src, tmp_path / "first.onnx", QuantizeConfig(random=2, held_out=1))
        args[1] = str(tmp_path / "first.onnx")
    elif case == "no-images":
        args += ["--images", str(tmp_path / "nowhere")]
    elif case in ("two-inputs", "dynamic"):
        m = onnx.load(src)
        if case == "two-inputs":
            m.graph.input.append(helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1]))
        else:
            m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
        onnx.save(m, tmp_path / "odd.onnx")
        args[1] = str(tmp_path / "odd.onnx")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "q.onnx").exists() or case == "same-file"


@pytest.mark.structure
def test_config_and_agreement():
    with pytest.raises(ValueError):
        QuantizeConfig(activation_type="int4")
    logits = np.array([[1.0, 3.0, 2.0]])
    assert agreement(logits, logits) == (1.0, pytest.approx(1.0))
    assert agreement(logits, -logits)[0] == 0.0
