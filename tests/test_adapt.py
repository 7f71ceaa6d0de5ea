"""`mobilec adapt`: the widths NetAdapt shrinks, the weights it carries, the network files it
writes, its data, and (with real builds) the latency table and a run that stops and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobilec.adapt import AdaptConfig, Device, LatencyTable, adapt, data, surgery
from mobilec.adapt.latency import key_of, layers
from mobilec.errors import ConfigError
from mobilec.frontends import create_model, get_spec
from mobilec.frontends.mobilenetv3 import MobileNetV3, MobileNetV3Config
from mobilec.frontends.registry import UnknownModelError, save_network


def _model(arch: str) -> MobileNetV3:
    return create_model(f"mobilenet_v3_{arch}")


def _shrunk(model: MobileNetV3, space: str, width: int) -> MobileNetV3:
    plan = surgery.shrink(model.plan, space, width)
    new = MobileNetV3(MobileNetV3Config("large"), plan)
    return surgery.carry(model, new, {space: surgery.ranked(model, space, width)}).eval()


@pytest.mark.structure
def test_residual_tied_widths_shrink_together():
    model = _model("large")
    sp = surgery.spaces(model.plan)
    # Large: the stem's 16 channels run through block 0's residual; blocks 3-5 share 40 channels.
    assert {"width:-1", "width:3", "exp:3"} <= set(sp.shrinkable()) and "width:0" not in sp.widths
    for space, tied in (("width:-1", [0]), ("width:3", [3, 4, 5])):
        new = _shrunk(model, space, 8)
        assert [new.plan.blocks[i].out for i in tied] == [8] * len(tied)
        assert [b.residual for b in new.plan.blocks] == [b.residual for b in model.plan.blocks]
        assert new(torch.randn(1, 3, 64, 64)).shape == (1, 1000)  # the residual adds line up
    assert _shrunk(model, "width:-1", 8).plan.stem == 8
    assert _shrunk(model, "width:-1", 8).plan.blocks[0].exp == 8  # its depthwise runs on the stem's width


@pytest.mark.structure
@pytest.mark.parametrize("space", ["exp:5", "width:3"])
def test_carried_weights_reproduce_the_untouched_layers_exactly(space):
    model = _model("large")
    first = 5 if space == "exp:5" else 3  # the first block the change touches
    new = _shrunk(model, space, 48 if space == "exp:5" else 24)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        _, old_taps = model.features(x, taps=tuple(range(first)))
        _, new_taps = new.features(x, taps=tuple(range(first)))
        for i in range(first):
            assert torch.equal(old_taps[i], new_taps[i]), f"block {i} changed"
        if space == "exp:5":  # the kept expansion channels compute what they computed before
            kept = surgery.ranked(model, space, 48)
            h = old_taps[first - 1]
            assert torch.equal(model.blocks[5].expand(h)[:, kept], new.blocks[5].expand(h))


@pytest.mark.structure
def test_ranked_keeps_the_filters_with_the_largest_l1_norm():
    model = _model("small")
    w = model.state_dict()["blocks.3.expand.0.weight"].abs().flatten(1).sum(1)
    kept = surgery.ranked(model, "exp:3", 16)
    assert torch.equal(kept, torch.sort(torch.topk(w, 16).indices).values)
    assert surgery.shrink(model.plan, "exp:3", 16).blocks[3].exp == 16


@pytest.mark.structure
def test_a_network_file_builds_by_its_path_with_its_weights(tmp_path):
    model = _model("small")
    new = _shrunk(model, "exp:4", 120)
    path = save_network(tmp_path / "adapted.json", new.plan, "mobilenet_v3_small", 224)
    torch.save(new.state_dict(), tmp_path / "adapted.pt")
    spec = get_spec(str(path))
    assert spec.input_size == 224 and spec.task == "classification"
    rebuilt = create_model(str(path), weights=str(tmp_path / "adapted.pt"))
    assert rebuilt.plan == new.plan
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), new(x))
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(UnknownModelError, match="not a network file"):
        get_spec(str(tmp_path / "bad.json"))
    with pytest.raises(UnknownModelError, match="no such network file"):
        get_spec(str(tmp_path / "missing.json"))


@pytest.mark.structure
def test_the_latency_table_keys_every_layer_with_its_resolution():
    plan = _model("small").plan
    ls = layers(plan, 224)
    assert [x["layer"] for x in ls] == ["call", "stem"] + ["block"] * 11 + ["head"]
    assert ls[1]["res"] == 224 and ls[2]["res"] == 112 and ls[3]["res"] == 56  # block 0 has stride 2
    assert ls[-1]["res"] == 7 and ls[-1]["cin"] == 96


@pytest.mark.structure
def test_lraspp_widths_shrink_with_its_head_and_its_file_rebuilds_it(tmp_path):
    """LR-ASPP's head reads the last conv and the 1/8 features: narrowing the width at the 1/8 tap
    slices its low classifier's input; the backbone's untouched blocks and the head's other
    layers keep their weights; the network file rebuilds LR-ASPP."""
    from mobilec.frontends.registry import network_model

    model = create_model("lraspp_mobilenet_v3_small")
    plan, low = model.plan, model.low_index
    assert plan.task == "segmentation" and plan.head == 128 and plan.num_classes == 21
    space = f"width:{low}"
    assert space in surgery.spaces(plan).shrinkable()
    kept = surgery.ranked(model, space, 16)
    new = surgery.carry(model, network_model("lraspp_mobilenet_v3_small", surgery.shrink(plan, space, 16)),
                        {space: kept}).eval()
    assert new.low_classifier.weight.shape[1] == 16 and new.low_index == low
    assert torch.equal(new.low_classifier.weight, model.low_classifier.weight[:, kept])
    assert torch.equal(new.high_classifier.weight, model.high_classifier.weight)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before, after = (m.backbone.blocks[0](m.backbone.stem(x)) for m in (model, new))
        assert torch.equal(before, after)
        assert new(x).shape == (1, 21, 64, 64)
    path = save_network(tmp_path / "seg.json", new.plan, "lraspp_mobilenet_v3_small", 512)
    torch.save(new.state_dict(), tmp_path / "seg.pt")
    assert get_spec(str(path)).task == "segmentation"
    rebuilt = create_model(str(path), weights=str(tmp_path / "seg.pt"))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), new(x))
    ls = layers(plan, 512)
    assert ls[-1]["layer"] == "lraspp" and ls[-1]["size"] == 512 and ls[-1]["low"] == plan.blocks[low].out
    assert ls[-1]["low_res"] == 64 and ls[-1]["res"] == 32  # 1/8 and 1/16 of 512 (the last blocks dilate)


@pytest.mark.structure
def test_segmentation_data_is_labelled_per_pixel_and_scored_by_mean_iou():
    from mobilec.adapt import train

    d = data.synthetic(32, size=32, masks=True)
    assert d.train_labels.shape[1:] == (32, 32) and d.classes[0] == "background" and len(d.classes) == 9
    assert set(d.train_labels.unique().tolist()) - {0} and 0 in d.train_labels

    class Predicts(torch.nn.Module):  # the held-out images' true classes, or the background everywhere
        def __init__(self, background: bool):
            super().__init__()
            self.background = background

        def forward(self, x):
            y = d.held_out_labels[: len(x)] * (not self.background)
            return torch.nn.functional.one_hot(y, 21).permute(0, 3, 1, 2).float()

    y = d.held_out_labels
    assert train.accuracy(Predicts(False), d) == 1.0
    # all background: its IoU is its share of the pixels, every other class present scores 0
    assert train.accuracy(Predicts(True), d) == pytest.approx(float((y == 0).float().mean()) / len(y.unique()))


@pytest.mark.structure
def test_the_generated_data_and_a_folder_of_images(tmp_path):
    from PIL import Image

    d = data.synthetic(64, size=48)
    assert d.labelled and d.train.shape[1:] == (3, 48, 48) and len(d.train) + len(d.held_out) == 64
    assert set(d.train_labels.tolist()) <= set(range(8)) and len(d.classes) == 8
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "labelled" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
                tmp_path / "labelled" / cls / f"{i}.png")
    d = data.folder(tmp_path / "labelled", size=32)
    assert d.labelled and d.classes == ["cat", "dog"] and d.train.shape[1:] == (3, 32, 32)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(flat / f"{i}.jpg")
    assert not data.folder(flat, size=32).labelled
    (flat / "broken.png").write_bytes(b"not a png")
    with pytest.raises(data.DataError, match="broken.png"):
        data.folder(flat, size=32)
    with pytest.raises(data.DataError, match="no such folder"):
        data.folder(tmp_path / "nowhere")


@pytest.mark.structure
def test_settings_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="--budget"):
        AdaptConfig()
    with pytest.raises(ConfigError, match="between 0 and 1"):
        AdaptConfig(budget=1.5)
    with pytest.raises(ConfigError, match="--key"):
        AdaptConfig(budget=0.5, device=Device(tracker="127.0.0.1:9190"))


@pytest.mark.structure
def test_the_command_line_says_what_is_missing(capsys):
    from mobilec.cli import main

    assert main(["adapt", "mobilenet_v3_small", "-o", "x", "--budget", "0.5"]) == 2
    assert "--tracker HOST:PORT --key KEY, or --local" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["adapt", "mobilenet_v3_small", "-o", "x", "--local"])  # no budget
    assert "--budget" in capsys.readouterr().err


# ---- real builds, timed on this machine --------------------------------------------------------

SMALL = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    return tmp_path_factory.mktemp("latency") / "table.json"


@pytest.fixture(autouse=True)
def short_timing(monkeypatch):
    """Each timing spans half a second here, not the seconds a quiet time needs on a busy machine."""
    from mobilec.adapt import latency

    monkeypatch.setattr(latency, "SPAN_S", 0.5)


def _config(table_path, **kw) -> AdaptConfig:
    base = dict(budget=0.97, synthetic=96, steps=2, pretrain=10, final_steps=5, input_size=128, resolution=32,
                delta=0.05, extra_steps=0, table=str(table_path))  # one step meets the predicted budget
    return AdaptConfig(**{**base, **kw})


@pytest.mark.build
def test_the_latency_table_is_measured_once_and_reused(table_path):
    plan = create_model(SMALL).plan
    table = LatencyTable(table_path, Device())
    assert table.measure([plan], 128) == len({key_of(x) for x in layers(plan, 128)})  # equal blocks once
    again = LatencyTable(table_path, Device())
    assert again.missing([plan], 128) == [] and again.measure([plan], 128) == 0
    assert again.predict(plan, 128) == pytest.approx(table.predict(plan, 128)) and table.predict(plan, 128) > 0
    doc = json.loads(table_path.read_text())
    assert list(doc["devices"]) == [Device().table_key()]


@pytest.mark.build
def test_whole_networks_are_timed_in_the_layers_batch(tmp_path):
    """``beside``: a whole network timed in the same alternating batch as the layers, so its time
    and the table's prediction share the device's state of that moment."""
    from mobilec.adapt.latency import export, network
    from mobilec.compiler import compile_model

    model, shapes = network({"layer": "call"})
    lib = compile_model(export(model, shapes, tmp_path / "net.onnx"), tmp_path / "net.so").library
    plan = create_model(SMALL).plan
    table = LatencyTable(tmp_path / "table.json", Device())
    assert table.measure([plan], 64, beside={"whole": lib}) == len({key_of(x) for x in layers(plan, 64)})
    assert list(table.beside_ms) == ["whole"] and table.beside_ms["whole"] > 0
    assert table.measure([plan], 64, beside={"again": lib}) == 0 and list(table.beside_ms) == ["again"]


@pytest.mark.build
def test_a_stopped_run_resumes_where_it_stopped(table_path, tmp_path):
    out = tmp_path / "out"
    first = adapt(SMALL, out, _config(table_path, max_steps=1))
    assert [s["step"] for s in first.steps] == [0, 1] and not first.final
    step1 = json.loads((out / "log.json").read_text())["steps"][1]
    assert step1["proposals"] and step1["predicted_ms"] < first.steps[0]["predicted_ms"]

    def interrupt(message, _transient):  # Ctrl-C in the middle of the next step (or the final fine-tune)
        if "fine-tuning proposal" in message or message.startswith("final fine-tune"):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        adapt(SMALL, out, _config(table_path), interrupt)
    log = json.loads((out / "log.json").read_text())
    assert [s["step"] for s in log["steps"]] == [0, 1] and log["steps"][1] == step1  # step 1 kept as it was

    lines = []
    done = adapt(SMALL, out, _config(table_path), lambda m, t: lines.append(m))
    assert any(m.startswith("resuming") for m in lines)
    assert done.steps[1] == step1 and len(done.steps) >= 2 and done.final
    assert done.steps[-1]["predicted_ms"] <= done.target_ms or any("short of the target" in m for m in lines)
    for s in done.steps:
        assert 0 <= s["accuracy"] <= 1 and s["measured_ms"] > 0 and "reward" in s
    # the files rebuild the adapted network, and its ONNX file computes what its weights do
    import onnxruntime as ort

    net = create_model(str(out / "adapted.json"), weights=str(out / "adapted.pt"))
    assert net.plan.to_dict() == done.steps[-1]["plan"]
    x = np.random.default_rng(0).standard_normal((1, 3, 128, 128), dtype=np.float32)
    sess = ort.InferenceSession(str(out / "adapted.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert float(np.abs(sess.run(None, {"input": x})[0] - want).max()) <= 1e-5 * float(np.abs(want).max())
    assert (out / "adapt.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="another adaptation"):
        adapt(SMALL, out, _config(table_path, budget=0.9))


@pytest.mark.build
def test_lraspp_adapts_on_masks_scored_by_mean_iou(tmp_path):
    """LR-ASPP: its head is one layer of the table (to the input's size), a step shrinks it and
    the log says what accuracy means."""
    cfg = _config(tmp_path / "table.json", input_size=64, max_steps=1, final_steps=0)
    res = adapt("lraspp_mobilenet_v3_small", tmp_path / "out", cfg)
    assert [s["step"] for s in res.steps] == [0, 1] and res.accuracy_means.startswith("mean IoU")
    assert res.steps[1]["predicted_ms"] < res.steps[0]["predicted_ms"]
    assert all(0 <= s["accuracy"] <= 1 and s["measured_ms"] > 0 for s in res.steps)
    table = json.loads((tmp_path / "table.json").read_text())["devices"][Device().table_key()]
    assert sum(json.loads(k)["layer"] == "lraspp" for k in table) >= 1
    net = create_model(str(tmp_path / "out" / "adapted.json"), weights=str(tmp_path / "out" / "adapted.pt"))
    assert net.plan.task == "segmentation" and net(torch.randn(1, 3, 64, 64)).shape == (1, 21, 64, 64)


@pytest.mark.build
def test_the_command_prints_the_steps(table_path, tmp_path, capsys):
    from mobilec.cli import main

    assert main(["adapt", SMALL, "--local", "--budget", "0.9", "--synthetic", "64", "--steps", "1", "--pretrain",
                 "5", "--input-size", "128", "--resolution", "32", "--max-steps", "0", "--table", str(table_path),
                 "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "NetAdapt steps" in out and "stopped after step 0" in out and "adapted.json" in out
