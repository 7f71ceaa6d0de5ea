"""A latency lookup table measured on the device, with mobilec's own compiled kernels.

Each distinct layer of a plan (the stem, a block with its widths, kernel, stride, SE, activation
and input resolution, the classifier's head or LR-ASPP's) is exported as a network of its own, compiled by the real
pipeline for the target and timed on the device (this machine, or one behind an RPC tracker),
every layer of a batch in alternating blocks. A block's network takes and gives NHWC, so the
layout pass cancels the transposes around it and it runs as it runs inside the model. A
network's time includes one call's fixed cost (the VM's dispatch, the timer): the ``call`` entry,
an almost empty network, measures it; each layer's entry keeps its time above it, and a model's
predicted latency is the fixed cost plus the sum of its layers' entries.

The table is a JSON file keyed by device (triple, CPU preset, where, threads) and layer, reused
by every later run: only layers it lacks are compiled and timed.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from mobilec.frontends.lraspp import LRASPPHead
from mobilec.files import write_atomic
from mobilec.frontends.mobilenetv3 import Bottleneck, ConvBNAct, Plan, activation

VERSION = 1


@dataclass(frozen=True)
class Device:
    """Where latency is measured: this machine (``tracker`` None) or a device behind a tracker."""

    target: str = "host"
    cpu: Optional[str] = None
    tracker: Optional[str] = None
    key: Optional[str] = None
    threads: Optional[int] = None

    def open(self):
        import mobilec.runtime as mr

        return mr.connect(tracker=self.tracker, key=self.key, timeout=120) if self.tracker else mr

    def describe(self) -> str:
        return f"the {self.key!r} device at {self.tracker}" if self.tracker else "this machine"

    def table_key(self) -> str:
        from mobilec.targets import resolve

        r = resolve(self.target, self.cpu)
        where = f"rpc:{self.key}" if self.tracker else "local"
        return f"{r.triple} {r.cpu} {where} threads={self.threads or 'default'}"


ROUNDS = 10  # alternating rounds of 5 calls per library: a layer of a MobileNet takes tens of microseconds
SPAN_S = 4.0  # and rounds for at least this long: a busy spell of a shared machine lasts seconds
SETTLE_S = 0.5  # idle before timing: PyTorch's OpenMP threads spin on after fine-tuning


def time_on(device: Device, libraries: dict[str, Path]) -> dict[str, float]:
    """Each library's latency (ms) on ``device``, all timed in alternating blocks for at least
    ``SPAN_S``: the 10th percentile of its block medians (``quiet_ms``), the device at its quietest.
    Tables and whole networks are timed minutes apart; the median of one timing moves with the
    load of the moment (a shared VM: up to 2x within a minute, measured), the quiet time much less."""
    from mobilec.compiler.verdict import time_alternately

    where = device.open()
    modules = {name: where.load(lib, threads=device.threads) for name, lib in libraries.items()}
    time.sleep(SETTLE_S)
    return time_alternately(modules, rounds=ROUNDS, statistic="quiet_ms", min_seconds=SPAN_S)


def out_size(res: int, kernel: int, stride: int, dilation: int = 1) -> int:
    pad = (kernel - 1) // 2 * dilation
    return (res + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def layers(plan: Plan, input_size: int) -> list[dict]:
    """The plan's layers as table keys: the call's fixed cost, the stem, each block, the head."""
    res = out_size(input_size, 3, 2)
    out = [{"layer": "call"}, {"layer": "stem", "res": input_size, "out": plan.stem, "nl": plan.nl_stem}]
    sizes = []
    for cin, b in zip(plan.inputs(), plan.blocks):
        out.append({"layer": "block", "res": res, "cin": cin, **asdict(b)})
        res = out_size(res, b.kernel, b.conv_stride, b.dilation)
        sizes.append(res)
    top = {"res": res, "cin": plan.blocks[-1].out, "last": plan.last, "classes": plan.num_classes, "nl": plan.nl_stem}
    if plan.task == "segmentation":  # the last conv and LR-ASPP, reading the 1/8 features too
        low = plan.low_tap()
        out.append({"layer": "lraspp", **top, "inter": plan.head, "low_res": sizes[low], "low": plan.blocks[low].out,
                    "size": input_size})
    else:
        out.append({"layer": "head", **top, "head": plan.head})
    return out


def key_of(layer: dict) -> str:
    return json.dumps(layer, sort_keys=True, separators=(",", ":"))


class _NHWC(nn.Module):
    """A layer between NHWC tensors, as the layout pass runs it inside a model."""

    def __init__(self, body: nn.Module, nchw_in: bool = False, nhwc_out: bool = True):
        super().__init__()
        self.body, self.nchw_in, self.nhwc_out = body, nchw_in, nhwc_out

    def forward(self, x):
        y = self.body(x if self.nchw_in else x.permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1) if self.nhwc_out else y


class _Head(nn.Module):
    def __init__(self, cin: int, last: int, head: int, classes: int, nl: str):
        super().__init__()
        self.last_conv = ConvBNAct(cin, last, nl=nl)
        self.classifier = nn.Sequential(nn.Linear(last, head), activation(nl), nn.Linear(head, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.last_conv(x), 1), 1))


class _LRASPP(nn.Module):
    """The last conv and the LR-ASPP head, between NHWC features (1/16 and 1/8) and the class
    scores at the input's size (NCHW, as the model gives them)."""

    def __init__(self, layer: dict):
        super().__init__()
        self.last_conv = ConvBNAct(layer["cin"], layer["last"], nl=layer["nl"])
        self.head = LRASPPHead(layer["last"], layer["low"], layer["inter"], layer["classes"])
        self.size = (layer["size"], layer["size"])

    def forward(self, high, low):
        return self.head.decode(self.last_conv(high.permute(0, 3, 1, 2)), low.permute(0, 3, 1, 2), self.size)


def network(layer: dict) -> tuple[nn.Module, list[tuple[int, ...]]]:
    """The network that times ``layer``, and its inputs' shapes."""
    kind, res = layer["layer"], layer.get("res", 1)
    if kind == "call":
        return _NHWC(nn.ReLU()), [(1, 1, 1, 8)]
    if kind == "stem":
        return _NHWC(ConvBNAct(3, layer["out"], 3, 2, nl=layer["nl"]), nchw_in=True), [(1, 3, res, res)]
    if kind == "block":
        from mobilec.frontends.mobilenetv3 import Block

        block = Block(**{k: v for k, v in layer.items() if k not in ("layer", "res", "cin")})
        return _NHWC(Bottleneck(layer["cin"], block)), [(1, res, res, layer["cin"])]
    if kind == "lraspp":
        low = layer["low_res"]
        return _LRASPP(layer), [(1, res, res, layer["cin"]), (1, low, low, layer["low"])]
    head = _Head(layer["cin"], layer["last"], layer["head"], layer["classes"], layer["nl"])
    return _NHWC(head, nhwc_out=False), [(1, res, res, layer["cin"])]


def export(model: nn.Module, shapes: list[tuple[int, ...]], path: Path) -> Path:
    names = ["input"] if len(shapes) == 1 else [f"input{i}" for i in range(len(shapes))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        torch.onnx.export(model.eval(), tuple(torch.randn(s) for s in shapes), str(path), dynamo=False,
                          opset_version=17, input_names=names, output_names=["output"])
    return path


class LatencyTable:
    """The table in ``path`` for one device; ``measure`` fills what a plan lacks."""

    def __init__(self, path, device: Device):
        self.path, self.device = Path(path), device
        self.key = device.table_key()
        self.measured_now = 0  # entries this process measured (the rest came from the file)
        self.beside_ms: dict[str, float] = {}  # the last ``measure``'s whole networks
        try:
            doc = json.loads(self.path.read_text())
            self._doc = doc if doc.get("version") == VERSION else {"version": VERSION, "devices": {}}
        except FileNotFoundError:
            self._doc = {"version": VERSION, "devices": {}}
        except ValueError as e:
            from mobilec.errors import ConfigError

            raise ConfigError(f"{self.path}: not a latency table ({e}); move it away to start a new one") from None
        self.entries: dict[str, dict] = self._doc["devices"].setdefault(self.key, {})

    def missing(self, plans: list[Plan], input_size: int) -> list[dict]:
        seen, out = set(), []
        for plan in plans:
            for layer in layers(plan, input_size):
                k = key_of(layer)
                if k not in self.entries and k not in seen:
                    seen.add(k)
                    out.append(layer)
        return out

    def measure(self, plans: list[Plan], input_size: int, say: Callable[[str], None] = lambda _: None,
                beside: Optional[dict[str, Path]] = None) -> int:
        """Compile and time every layer of ``plans`` the table lacks; returns how many. The call's
        fixed cost is timed again with every batch (its layers' entries are relative to it).
        ``beside``: libraries of whole networks timed in the same batch, their times (ms) left in
        ``beside_ms``: a prediction checked against them has no drift between the two timings."""
        todo = self.missing(plans, input_size)
        if not todo and not beside:
            return 0
        call = {"layer": "call"}
        batch = todo if call in todo else [call] + todo
        from mobilec.compiler import CompileConfig, compile_model

        with tempfile.TemporaryDirectory(prefix="mobilec-latency-") as tmp:
            libraries = {}
            for n, layer in enumerate(batch):
                say(f"latency table: compiling layer {n + 1} of {len(batch)} ({describe(layer)})")
                model, shapes = network(layer)
                onnx_path = export(model, shapes, Path(tmp) / f"{n}.onnx")
                cfg = CompileConfig(target=self.device.target, cpu=self.device.cpu)
                libraries[str(n)] = compile_model(onnx_path, Path(tmp) / f"{n}.so", cfg).library
            say(f"latency table: timing {len(batch)} layers on {self.device.describe()}")
            ms = time_on(self.device, {**libraries, **{f"beside:{k}": v for k, v in (beside or {}).items()}})
        self.beside_ms = {k: ms[f"beside:{k}"] for k in beside or {}}
        fixed = ms["0"]
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for n, layer in enumerate(batch):
            own = ms[str(n)] if n == 0 else max(0.0, ms[str(n)] - fixed)
            self.entries[key_of(layer)] = {"ms": round(own, 5), "measured_at": stamp}
        self.measured_now += len(todo)
        self.save()
        return len(todo)

    def predict(self, plan: Plan, input_size: int) -> float:
        """The plan's latency (ms): the call's fixed cost plus every layer's entry."""
        return sum(self.entries[key_of(layer)]["ms"] for layer in layers(plan, input_size))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self._doc, indent=1) + "\n")


def describe(layer: dict) -> str:
    kind = layer["layer"]
    if kind == "block":
        se = " SE" if layer["se"] else ""
        return (f"block {layer['cin']}->{layer['exp']}->{layer['out']} k{layer['kernel']} s{layer['stride']}{se} "
                f"{layer['nl']} at {layer['res']}px")
    if kind == "stem":
        return f"stem 3->{layer['out']} at {layer['res']}px"
    if kind == "head":
        return f"head {layer['cin']}->{layer['last']}->{layer['head']}->{layer['classes']}"
    if kind == "lraspp":
        return (f"LR-ASPP {layer['cin']}->{layer['last']}->{layer['inter']}->{layer['classes']} with "
                f"{layer['low']} at 1/8, to {layer['size']}px")
    return "one call's fixed cost"
