"""The model family: the paper's figures, the variants, torchvision weights, ONNX export."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from mobilec.frontends import MODELS, ExportConfig, UnknownModelError, count, create_model, export_onnx
from mobilec.frontends.mobilenetv3 import LARGE, SMALL, MobileNetV3, MobileNetV3Config, make_divisible
from mobilec.frontends.weights import WeightsError, load_torchvision_weights

pytestmark = pytest.mark.structure

PAPER = [name for name, s in MODELS.items() if s.paper_madds_m is not None]


@pytest.mark.parametrize("name", PAPER)
def test_paper_figures_within_3_percent(name):
    spec = MODELS[name]
    st = count(spec.build(), spec.input_size)
    assert abs(st.madds / 1e6 / spec.paper_madds_m - 1) < 0.03, st
    assert abs(st.params / 1e6 / spec.paper_params_m - 1) < 0.03, st


def test_paper_models_are_registered():
    # Table 3 of the paper: Large and Small at width 1.0 and 0.75
    assert {"mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v3_large_075", "mobilenet_v3_small_075"} <= set(PAPER)


@pytest.mark.parametrize("arch", ["large", "small"])
def test_width_multipliers_scale_params_and_madds(arch):
    stats = [count(create_model(f"mobilenet_v3_{arch}{suffix}"), 224)
             for suffix in ("_035", "_050", "_075", "", "_125")]
    assert [s.madds for s in stats] == sorted(s.madds for s in stats)
    assert len({s.madds for s in stats}) == 5 and len({s.params for s in stats}) == 5
    assert [s.params for s in stats] == sorted(s.params for s in stats)


def test_tables_match_paper_rows():
    assert len(LARGE) == 15 and len(SMALL) == 11
    assert sum(r.se for r in LARGE) == 8 and sum(r.se for r in SMALL) == 9
    assert [r.exp for r in LARGE] == [16, 64, 72, 72, 120, 120, 240, 200, 184, 184, 480, 672, 672, 960, 960]
    assert [r.out for r in SMALL] == [16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96]


def test_make_divisible():
    assert make_divisible(16 * 0.35) == 8 and make_divisible(24 * 0.75) == 24 and make_divisible(60) == 64
    assert make_divisible(96 * 0.5) == 48 and all(make_divisible(v) % 8 == 0 for v in range(1, 500))


@pytest.mark.parametrize("arch", ["large", "small"])
def test_minimalistic_has_no_se_no_hswish_and_3x3_only(arch):
    model = create_model(f"mobilenet_v3_{arch}_minimal")
    assert not any(isinstance(m, nn.Hardswish) for m in model.modules())
    assert all(b.se is None for b in model.blocks)
    kernels = {b.depthwise[0].kernel_size for b in model.blocks}
    assert kernels == {(3, 3)}


def test_counter_counts_a_known_conv():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False))
    assert count(conv, 32).madds == 8 * 32 * 32 * 3 * 9
    assert count(conv, 32).params == 8 * 3 * 9


def test_lraspp_output_and_taps():
    model = create_model("lraspp_mobilenet_v3_large")
    assert model.low_index == 3 and model.low_classifier.in_channels == 40
    assert model.high_classifier.in_channels == 128 and model.cbr[0].in_channels == 960
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 256, 320))
    assert y.shape == (1, 21, 256, 320)
    # dilated last stage: the 1/16 features stay 16x20 for a 256x320 input
    feats, _ = model.backbone.features(torch.zeros(1, 3, 256, 320))
    assert feats.shape[-2:] == (16, 20)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError, match="mobilenet_v3_large.*mobilenet_v3_small"):
        create_model("mobilenet_v4")


# -- torchvision weights: a state_dict in torchvision's key layout, written here -----------------

def torchvision_layout(model: MobileNetV3, prefix="features.") -> dict[str, torch.Tensor]:
    """Re-derive torchvision's keys from its own numbering rules (features.N.block.M.K, fc1/fc2)."""
    sd, ours = {}, model.state_dict()
    for k, v in ours.items():
        m = re.match(r"blocks\.(\d+)\.(expand|depthwise|se|project)\.(.*)", k)
        if k.startswith("stem."):
            sd[prefix + "0." + k[5:]] = v
        elif k.startswith("last_conv."):
            sd[f"{prefix}{len(model.blocks) + 1}." + k[10:]] = v
        elif m:
            i, part, rest = int(m[1]), m[2], m[3]
            block = model.blocks[i]
            order = [n for n in ("expand", "depthwise", "se", "project") if getattr(block, n) is not None]
            rest = rest.replace("reduce.", "fc1.").replace("expand.", "fc2.") if part == "se" else rest
            sd[f"{prefix}{i + 1}.block.{order.index(part)}.{rest}"] = v
        else:
            sd[k] = v
    return sd


def perturbed(name: str) -> nn.Module:
    """A registered model with weights unlike any fresh model's, still a sane network."""
    model = create_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.1 * torch.randn_like(p)).add_(0.01 * torch.randn_like(p))
    return model


def assert_same_outputs(src: nn.Module, dst: nn.Module, size: int) -> None:
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        want = src.eval()(x)
        assert torch.isfinite(want).all() and want.abs().max() > 0
        assert torch.equal(want, dst(x))


def test_torchvision_weights_load(tmp_path):
    src = perturbed("mobilenet_v3_large")
    sd = torchvision_layout(src)
    # keys as torchvision's mobilenet_v3_large names them
    assert sd["features.1.block.0.0.weight"].shape == (16, 1, 3, 3)  # no expansion in row 1
    assert sd["features.4.block.2.fc1.weight"].shape == (24, 72, 1, 1)
    assert sd["features.16.0.weight"].shape == (960, 160, 1, 1)
    assert sd["classifier.3.weight"].shape == (1000, 1280)
    torch.save(sd, tmp_path / "tv.pth")
    assert_same_outputs(src, create_model("mobilenet_v3_large", weights=str(tmp_path / "tv.pth")), 224)


def test_torchvision_lraspp_weights_load(tmp_path):
    src = perturbed("lraspp_mobilenet_v3_large")
    sd = {k: v for k, v in torchvision_layout(src.backbone, "backbone.").items() if not k.startswith("classifier")}
    sd = {("backbone." + k if not k.startswith("backbone.") else k): v for k, v in sd.items()}
    for k, v in src.state_dict().items():
        if not k.startswith("backbone."):
            tv = {"scale.weight": "classifier.scale.1.weight"}.get(k, "classifier." + k)
            sd[tv] = v
    torch.save({"model": sd}, tmp_path / "lr.pth")
    assert_same_outputs(src, create_model("lraspp_mobilenet_v3_large", weights=str(tmp_path / "lr.pth")), 128)


def test_weights_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        load_torchvision_weights(create_model("mobilenet_v3_small"), tmp_path / "junk.pth")
    sd = torchvision_layout(create_model("mobilenet_v3_large"))
    torch.save(sd, tmp_path / "large.pth")
    with pytest.raises(WeightsError, match="shape mismatch|missing|not in torchvision"):
        load_torchvision_weights(create_model("mobilenet_v3_small"), tmp_path / "large.pth")


@pytest.mark.parametrize("name", list(MODELS))
def test_export_parity_with_onnxruntime(name, exported):
    import onnx

    path = exported(name)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert not any(n.op_type in ("Dropout", "RandomUniformLike") for n in proto.graph.node)  # eval mode
    from mobilec.frontends import export_model  # re-export: the result carries the parity error

    res = export_model(name, path.with_suffix(".again.onnx"))
    assert res.max_abs_error < 1e-4, res


def test_export_any_module_with_dynamo(tmp_path):
    model = MobileNetV3(MobileNetV3Config("small", width=0.35))
    res = export_onnx(model, tmp_path / "s.onnx", ExportConfig(input_size=96, exporter="dynamo"))
    assert res.max_abs_error < 1e-4 and res.output_shape == (1, 1000)
