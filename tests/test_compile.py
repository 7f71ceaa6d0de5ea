"""Whole models: every registered model and MobileNetV3 in other exporters' styles, compiled for the
host and compared with onnxruntime; fusion counts per model; cross builds checked by ELF header."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mobilec.runtime as mr
from helpers import onnxruntime_outputs, seeded_input
from mobilec.compiler import CompileConfig, TargetError, compile_model, inspect_model
from mobilec.frontends import MODELS, ExportConfig, create_model, export_onnx
from mobilec.runtime.manifest import elf_header

RTOL = 1e-4  # max abs error relative to the largest reference output


def assert_parity(library, onnx_path, seed=0):
    module = mr.load(library)
    x = seeded_input(module.inputs[0]["shape"], seed)
    want = onnxruntime_outputs(onnx_path, {module.inputs[0]["name"]: x})[0]
    got = module(x)
    err, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
    assert scale > 1e-3, "degenerate reference output"
    assert err <= RTOL * scale, (err, scale)


@pytest.mark.build
@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_matches_onnxruntime(name, compiled, exported):
    res = compiled(name)
    assert_parity(res.library, exported(name))
    m = res.manifest
    assert m.sha256 and m.inputs[0]["shape"] == [1, 3, MODELS[name].input_size, MODELS[name].input_size]


def expected_totals(name):
    """From the model itself: SE blocks, h-swish and residual adds as the tables define them."""
    model = create_model(name)
    net = getattr(model, "backbone", model)
    blocks = list(net.blocks)
    se = sum(b.se is not None for b in blocks)
    hswish = sum(isinstance(m, nn.Hardswish) for m in model.modules())
    residual = sum(b.residual for b in blocks)
    if name.startswith("lraspp"):
        residual += 1  # the head's low + high classifier sum is a conv + add as well
    return se, hswish, residual


@pytest.mark.structure
@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v3_large_minimal",
                                  "lraspp_mobilenet_v3_large"])
def test_fusion_counts_follow_the_tables(name, exported):
    se, hswish, residual = expected_totals(name)
    report = inspect_model(exported(name)).report
    totals = report.totals
    assert totals.get("se", 0) == se and totals.get("hswish", 0) == hswish, report.to_dict()
    assert totals.get("residual", 0) == residual, report.to_dict()
    if name == "mobilenet_v3_large":
        assert (se, hswish, residual) == (8, 21, 10)  # Table 1: 8 SE rows; 21 h-swish layers
    if name == "mobilenet_v3_small":
        assert se == 9


# -- the same network as other exporters write it ------------------------------------------

class FunctionalHSwish(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form

    def forward(self, x):
        if self.form == "relu6_div":
            return x * F.relu6(x + 3) / 6
        if self.form == "mul_sixth":
            return x * F.relu6(x + 3) * (1 / 6)
        if self.form == "minmax":
            return x * torch.minimum(torch.maximum(x + 3, torch.tensor(0.0)), torch.tensor(6.0)) / 6
        raise ValueError(self.form)


class FunctionalHSigmoid(nn.Module):
    def forward(self, x):
        return F.relu6(x + 3) / 6


def restyled(form):
    model = create_model("mobilenet_v3_small_050")
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Hardswish):
                setattr(parent, name, FunctionalHSwish(form))
    return model


@pytest.mark.build
@pytest.mark.parametrize("form", ["relu6_div", "mul_sixth", "minmax"])
def test_functional_hswish_styles(form, tmp_path):
    path = tmp_path / "m.onnx"
    export_onnx(restyled(form), path, ExportConfig(input_size=96))
    res = compile_model(path, tmp_path / "m.so")
    se, hswish, _ = expected_totals("mobilenet_v3_small_050")
    assert res.report.totals.get("hswish") == hswish and res.report.totals.get("se") == se, res.report.to_dict()
    assert_parity(res.library, path)


@pytest.mark.build
def test_dynamo_exporter(tmp_path):
    path = tmp_path / "d.onnx"
    export_onnx(create_model("mobilenet_v3_small"), path, ExportConfig(exporter="dynamo", input_size=128))
    res = compile_model(path, tmp_path / "d.so")
    assert res.report.totals.get("se") == 9 and res.report.totals.get("hswish") == expected_totals("mobilenet_v3_small")[1]
    assert_parity(res.library, path)


class SamePadConv(nn.Module):
    """TensorFlow "same" padding computed from the input shape at run time (timm's Conv2dSame)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        ih, iw = x.shape[-2:]
        ph = max((math.ceil(ih / 2) - 1) * 2 + 3 - ih, 0)
        pw = max((math.ceil(iw / 2) - 1) * 2 + 3 - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.hardswish(self.conv(x))


@pytest.mark.build
def test_dynamic_same_padding(tmp_path):
    path = tmp_path / "same.onnx"
    torch.onnx.export(SamePadConv().eval(), (torch.randn(1, 3, 33, 33),), str(path), dynamo=False,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {2: "h", 3: "w"}, "output": {2: "oh", 3: "ow"}})
    import onnx

    assert any(n.op_type == "Shape" for n in onnx.load(str(path)).graph.node)
    res = compile_model(path, tmp_path / "same.so", CompileConfig(input_shapes={"input": (1, 3, 33, 33)}))
    assert res.manifest.outputs[0]["shape"] == [1, 8, 17, 17]
    assert res.report.matched.get("mobilec.conv2d_bias_hswish") == 1, res.report.to_dict()
    assert_parity(res.library, path)


@pytest.mark.build
@pytest.mark.parametrize("triple, machine, elf_class", [("aarch64-linux-gnu", 183, 2),
                                                        ("armv7a-linux-gnueabihf", 40, 1)])
def test_cross_builds_have_the_right_elf_header(triple, machine, elf_class, exported, tmp_path):
    res = compile_model(exported("mobilenet_v3_small"), tmp_path / "x.so", CompileConfig(target=triple))
    assert elf_header(res.library) == (elf_class, machine)
    assert res.manifest.triple == triple and res.manifest.target["mtriple"] == triple
    with pytest.raises(Exception, match="aarch64|arm"):
        mr.load(res.library)  # not runnable on this x86 host: the runtime says so


@pytest.mark.structure
def test_target_errors_name_the_valid_choices(exported, tmp_path, monkeypatch):
    with pytest.raises(TargetError, match="valid: host, aarch64-linux-android"):
        compile_model(exported("mobilenet_v3_small"), tmp_path / "x.so", CompileConfig(target="riscv64"))
    with pytest.raises(TargetError, match="cortex-a76"):
        compile_model(exported("mobilenet_v3_small"), tmp_path / "x.so",
                      CompileConfig(target="aarch64-linux-gnu", cpu="pentium"))
    monkeypatch.delenv("ANDROID_NDK_HOME", raising=False)
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    with pytest.raises(TargetError, match="ANDROID_NDK_HOME"):
        compile_model(exported("mobilenet_v3_small"), tmp_path / "x.so",
                      CompileConfig(target="aarch64-linux-android"))


@pytest.mark.build
def test_dump_ir_writes_every_phase(exported, tmp_path):
    compile_model(exported("mobilenet_v3_small_035"), tmp_path / "s.so", CompileConfig(dump_ir=str(tmp_path / "ir")))
    names = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert names == ["01_canonicalize.py", "02_fuse.py", "03_lower.py", "04_schedule.py", "05_finalize.py"]
    assert "mobilec.se" in (tmp_path / "ir" / "02_fuse.py").read_text()
