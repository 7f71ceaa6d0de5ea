"""``mobilec adapt``: NetAdapt on latency measured on the device with mobilec's compiled kernels.

``adapt(model, out, AdaptConfig(...))`` starts from a registered MobileNetV3 (and its weights),
shrinks it step by step until the latency the device's table predicts meets the budget, and
writes into ``out``: ``adapted.onnx``, ``adapted.json`` (the network: the registry builds it from
this path), ``adapted.pt`` (its weights), ``log.json`` (every step) and ``adapt.png``. Each
completed step is written at once; a rerun with the same ``out`` resumes after the last one.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from mobilec.adapt.latency import Device, LatencyTable
from mobilec.errors import ConfigError
from mobilec.files import write_atomic

__all__ = ["AdaptConfig", "AdaptResult", "Device", "LatencyTable", "adapt"]

LOG, NETWORK, WEIGHTS, ONNX, PLOT, START = "log.json", "adapted.json", "adapted.pt", "adapted.onnx", "adapt.png", \
    "start.pt"
# (message, transient): transient lines are the live status on a terminal, left out of plain logs
Progress = Callable[[str, bool], None]


@dataclass
class AdaptConfig:
    device: Device = field(default_factory=Device)
    budget: Optional[float] = None  # target latency as a fraction of the starting network's (predicted)
    budget_ms: Optional[float] = None  # or in milliseconds
    data: Optional[str] = None  # a folder of class subfolders of images (or of images: no labels)
    synthetic: Optional[int] = None  # or this many generated labelled images
    steps: int = 20  # fine-tuning steps per proposal (the paper's short-term fine-tune)
    weights: Optional[str] = None  # the starting weights (a torchvision state_dict)
    input_size: Optional[int] = None  # the resolution latency is measured at (default: the model's)
    resolution: int = 64  # the images' size for fine-tuning
    delta: float = 0.025  # each step cuts at least this share of the starting latency (the paper: 0.01)
    delta_decay: float = 0.96  # delta shrinks by this factor each step, as in the paper
    pretrain: Optional[int] = None  # steps to fit the start to labelled data (default: 600 if labelled)
    final_steps: int = 300  # the long fine-tune of the adapted network
    max_steps: Optional[int] = None  # stop after this many steps (a rerun continues)
    extra_steps: int = 3  # steps past the predicted target while the time measured on the device misses it
    table: str = "latency-table.json"
    seed: int = 0

    def __post_init__(self):
        if (self.budget is None) == (self.budget_ms is None):
            raise ConfigError("give the latency budget: --budget FRACTION (of the starting network's) or "
                              "--budget-ms MS")
        if self.budget is not None and not 0 < self.budget < 1:
            raise ConfigError(f"--budget {self.budget}: a fraction of the starting latency, between 0 and 1")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ConfigError(f"--budget-ms {self.budget_ms}: must be positive")
        if self.data is not None and self.synthetic is not None:
            raise ConfigError("--data and --synthetic: give one")
        if self.steps < 0 or self.final_steps < 0 or not 0 < self.delta < 1:
            raise ConfigError(f"--steps {self.steps}, --delta {self.delta}: need steps >= 0 and 0 < delta < 1")
        if self.device.tracker and not self.device.key:
            raise ConfigError("--tracker needs --key: the device kind to measure on")


@dataclass
class AdaptResult:
    out: Path
    steps: list[dict]
    final: dict
    start_ms: float  # measured
    adapted_ms: float  # measured
    target_ms: float
    table_measured: int  # layers this run compiled and timed (the rest came from the table)
    accuracy_means: str


def _data(cfg: AdaptConfig, segmentation: bool):
    from mobilec.adapt import data

    def unlabelled(d, why: str):
        d.train_labels = d.held_out_labels = None
        d.description = f"{d.description}, labels not used ({why})"
        return d

    if cfg.data:
        d = data.folder(cfg.data, cfg.resolution, cfg.seed)
        return unlabelled(d, "a segmentation model needs masks") if segmentation and d.labelled else d
    d = data.synthetic(cfg.synthetic or 2048, cfg.resolution, cfg.seed, masks=segmentation)
    # no data given: the generated images, distilling from the start
    return d if cfg.synthetic is not None else unlabelled(d, "no --data or --synthetic given")


class _Run:
    """One adaptation: the files in ``out``, the networks, the table and the whole-model timing."""

    def __init__(self, model: str, out: Path, cfg: AdaptConfig, say: Progress, tmp: Path):
        from mobilec.frontends import get_spec

        self.model, self.out, self.cfg, self.say, self.tmp = model, out, cfg, say, tmp
        self.spec = get_spec(model)
        self.base = self.spec.base or self.spec.name
        self.input_size = cfg.input_size or self.spec.input_size
        self.table = LatencyTable(cfg.table, cfg.device)
        self.data = _data(cfg, self.spec.task == "segmentation")
        if self.spec.task == "segmentation":
            self.accuracy_means = ("mean IoU on the held-out images" if self.data.labelled else
                                   "mean IoU against the starting network's classes on the held-out images (no "
                                   "labels: fine-tuning distils from it)")
        else:
            self.accuracy_means = ("top-1 accuracy on the held-out images" if self.data.labelled else
                                   "top-1 agreement with the starting network on the held-out images (no labels: "
                                   "fine-tuning distils from it)")
        self._libraries: dict[str, object] = {}

    # -- networks and their files ------------------------------------------------------------
    def build(self, plan, state=None):
        from mobilec.frontends.registry import network_model

        net = network_model(self.base, plan)
        if state is not None:
            net.load_state_dict(state)
        return net.eval()

    def export(self, net, path: Path) -> Path:
        from mobilec.frontends import ExportConfig, export_onnx

        export_onnx(net, path, ExportConfig(input_size=self.input_size))
        return path

    def save(self, net, log: dict) -> None:
        import torch

        from mobilec.frontends.registry import save_network

        write_atomic(self.out / WEIGHTS, lambda p: torch.save(net.state_dict(), p))
        save_network(self.out / NETWORK, net.plan, self.base, self.input_size)
        write_atomic(self.out / ONNX, lambda p: self.export(net, p))
        write_atomic(self.out / LOG, lambda p: p.write_text(json.dumps(log, indent=1) + "\n"))

    # -- whole-network latency ----------------------------------------------------------------
    def measure(self, start, adapted=None) -> dict[str, float]:
        """The start (compiled once) and ``adapted`` compiled and timed on the device in
        alternating blocks: {"start": ms, "adapted": ms}."""
        nets = {} if "start" in self._libraries else {"start": start}
        if adapted is not None:
            nets["adapted"] = adapted
        from mobilec.adapt.latency import time_on
        from mobilec.compiler import CompileConfig, compile_model

        dev = self.cfg.device
        for name, net in nets.items():
            self.say(f"compiling the {name} network for {dev.target}", True)
            onnx_path = self.export(net, self.tmp / f"{name}.onnx")
            self._libraries[name] = compile_model(onnx_path, self.tmp / f"{name}.so",
                                                  CompileConfig(target=dev.target, cpu=dev.cpu)).library
        self.say(f"timing the networks on {dev.describe()}", True)
        return time_on(dev, self._libraries)


def _plot(log: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = log["steps"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([s["measured_ms"] for s in steps], [s["accuracy"] for s in steps], "o-", label="measured")
    ax.plot([s["predicted_ms"] for s in steps], [s["accuracy"] for s in steps], "x--", alpha=0.6,
            label="predicted by the table")
    for s in steps:
        ax.annotate(str(s["step"]), (s["measured_ms"], s["accuracy"]), textcoords="offset points", xytext=(4, 4))
    if log.get("final"):
        f = log["final"]
        ax.plot([f["measured_ms"]], [f["accuracy"]], "*", markersize=12, label="after the final fine-tune")
    ax.axvline(log["target_ms"], color="grey", linestyle=":", label="target")
    ax.set_xlabel(f"latency (ms) on {log['device']}")
    ax.set_ylabel(log["accuracy_means"].split(" on ")[0])
    ax.set_title(f"NetAdapt from {log['model']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _identity(model: str, cfg: AdaptConfig, input_size: int) -> dict:
    """What a resumed run must share with the run it continues."""
    return {"model": model, "device": cfg.device.table_key(), "input_size": input_size, "budget": cfg.budget,
            "budget_ms": cfg.budget_ms, "data": cfg.data, "synthetic": cfg.synthetic, "weights": cfg.weights,
            "resolution": cfg.resolution, "seed": cfg.seed}


def adapt(model: str, out, config: Optional[AdaptConfig] = None, progress: Optional[Progress] = None) -> AdaptResult:
    """Adapt the registered ``model`` to the latency budget on ``config.device``; see the module."""
    import torch

    from mobilec.adapt import netadapt, surgery, train
    from mobilec.frontends import create_model

    cfg = config or AdaptConfig()
    say = progress or (lambda *_: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mobilec-adapt-") as tmp:
        run = _Run(model, out, cfg, say, Path(tmp))
        identity = _identity(model, cfg, run.input_size)
        log = _resumed(out, identity)
        if log is None:
            start = create_model(model, cfg.weights, seed=cfg.seed)
            pretrain = cfg.pretrain if cfg.pretrain is not None else (600 if run.data.labelled else 0)
            if pretrain:
                say(f"fitting the starting network to {run.data.description}: {pretrain} steps", False)
                train.fine_tune(start, run.data, pretrain, lr=2e-3, seed=cfg.seed)
            torch.save(start.state_dict(), out / START)
        else:
            start = run.build(_plan(log["steps"][0]), torch.load(out / START, weights_only=True))
        teacher = None if run.data.labelled else start
        run.table.measure([start.plan], run.input_size, lambda m: say(m, True))
        predicted_start = run.table.predict(start.plan, run.input_size)
        if log is None:
            target = cfg.budget_ms if cfg.budget_ms else cfg.budget * predicted_start
            measured = run.measure(start)["start"]
            acc = train.accuracy(start, run.data, teacher)
            log = {"identity": identity, "model": model, "device": cfg.device.describe(), "target_ms": target,
                   "data": run.data.description, "accuracy_means": run.accuracy_means,
                   "pretrain_steps": pretrain, "steps": [_step(0, start.plan, predicted_start, measured, acc, target)]}
            run.save(start, log)
            say(_line(log["steps"][0], predicted_start), False)
            current = start
        else:
            current = run.build(_plan(log["steps"][-1]), torch.load(out / WEIGHTS, weights_only=True))
            say(f"resuming {out} after step {log['steps'][-1]['step']}", False)
        target = log["target_ms"]
        try:
            while log.get("final") is None and not _met(log, cfg, say):
                n = len(log["steps"])
                if cfg.max_steps is not None and n > cfg.max_steps:
                    break
                delta = cfg.delta * predicted_start * cfg.delta_decay ** (n - 1)
                found = netadapt.candidates(current.plan, run.table, run.input_size, delta, lambda m: say(m, True))
                if not found:
                    say(f"step {n}: no width can shrink by {delta:.3f} ms any more; stopping short of the target",
                        False)
                    break
                acc_now, now = log["steps"][-1]["accuracy"], run.table.predict(current.plan, run.input_size)
                proposals, best, best_net = [], None, None
                for k, c in enumerate(found, 1):
                    say(f"step {n}: fine-tuning proposal {k} of {len(found)} ({surgery.describe(c.space)} "
                        f"-> {c.width})", True)
                    kept = {c.space: surgery.ranked(current, c.space, c.width)}
                    net = surgery.carry(current, run.build(c.plan), kept)
                    train.fine_tune(net, run.data, cfg.steps, teacher, seed=cfg.seed + n)
                    acc = train.accuracy(net, run.data, teacher)
                    ratio = (acc - acc_now) / max(now - c.predicted_ms, 1e-9)
                    width = surgery.spaces(current.plan).widths[c.space]
                    proposals.append({"space": c.space, "what": surgery.describe(c.space), "width": [width, c.width],
                                      "predicted_ms": round(c.predicted_ms, 4), "accuracy": acc,
                                      "accuracy_per_ms": round(ratio, 4)})
                    if best is None or ratio > best[1]:
                        best, best_net = (k - 1, ratio), net
                current = best_net
                predicted = run.table.predict(current.plan, run.input_size)
                ms = run.measure(start, current)
                step = _step(n, current.plan, predicted, ms["adapted"], proposals[best[0]]["accuracy"], target)
                step.update(start_measured_ms=round(ms["start"], 4), proposals=proposals, chosen=best[0],
                            delta_ms=round(delta, 4))
                log["steps"].append(step)
                run.save(current, log)
                _plot(log, out / PLOT)
                say(_line(step, predicted_start, proposals[best[0]]), False)
            if log.get("final") is None and (cfg.max_steps is None or len(log["steps"]) <= cfg.max_steps):
                if cfg.final_steps:
                    say(f"final fine-tune: {cfg.final_steps} steps", False)
                    train.fine_tune(current, run.data, cfg.final_steps, teacher, seed=cfg.seed + 10_000)
                ms = run.measure(start, current)
                log["final"] = {"fine_tune_steps": cfg.final_steps, "accuracy": train.accuracy(current, run.data,
                                                                                               teacher),
                                "measured_ms": ms["adapted"], "start_measured_ms": ms["start"],
                                "predicted_ms": run.table.predict(current.plan, run.input_size),
                                "start_predicted_ms": predicted_start,
                                "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
                run.save(current, log)
        except KeyboardInterrupt:
            say(f"stopped: {out} keeps step {log['steps'][-1]['step']}; the same command resumes from it", False)
            raise
        _plot(log, out / PLOT)
    final = log.get("final") or {}
    return AdaptResult(out, log["steps"], final, final.get("start_measured_ms", log["steps"][0]["measured_ms"]),
                       final.get("measured_ms", log["steps"][-1]["measured_ms"]), target, run.table.measured_now,
                       log["accuracy_means"])


def _met(log: dict, cfg: AdaptConfig, say: Progress) -> bool:
    """Whether the last step meets the budget: by the table's prediction and, as measured on the
    device beside the start, by the measured time too. Where the prediction meets it and the
    measurement does not, up to ``cfg.extra_steps`` more steps are taken."""
    steps, target = log["steps"], log["target_ms"]
    last = steps[-1]
    if last["predicted_ms"] > target:
        return False
    if "start_measured_ms" not in last:
        return True
    measured_ok = (last["measured_ms"] <= cfg.budget_ms if cfg.budget_ms else
                   last["measured_ms"] / last["start_measured_ms"] <= cfg.budget)
    extra = sum(1 for s in steps[1:] if s["predicted_ms"] <= target)
    if measured_ok or extra > cfg.extra_steps:
        return True
    say(f"step {last['step']}: the table's prediction meets the target, the time measured on the device does not "
        f"({_measured(last)}): another step", False)
    return False


def _measured(step: dict) -> str:
    return (f"{step['measured_ms']:.3f} ms, {step['measured_ms'] / step['start_measured_ms']:.2f}x the start timed "
            f"beside it")


def _plan(step: dict):
    from mobilec.frontends.mobilenetv3 import Plan

    return Plan.from_dict(step["plan"])


def _step(n: int, plan, predicted: float, measured: float, accuracy: float, target: float) -> dict:
    from mobilec.adapt.netadapt import reward

    return {"step": n, "predicted_ms": round(predicted, 4), "measured_ms": round(measured, 4),
            "table_error": round(predicted / measured - 1, 4), "accuracy": accuracy,
            # the table's latency: the measured time of one step moves with the device's load
            "reward": round(reward(accuracy, predicted, target), 4), "plan": plan.to_dict()}


def _line(step: dict, start_ms: float, chosen: Optional[dict] = None) -> str:
    what = f" ({chosen['what']} {chosen['width'][0]} -> {chosen['width'][1]})" if chosen else ""
    return (f"step {step['step']}{what}: predicted {step['predicted_ms']:.3f} ms ({step['predicted_ms'] / start_ms:.2f}x "
            f"the start), measured " + (_measured(step) if "start_measured_ms" in step else
                                        f"{step['measured_ms']:.3f} ms")
            + f", accuracy {step['accuracy']:.3f}, "
            f"reward {step['reward']:.3f}")


def _resumed(out: Path, identity: dict) -> Optional[dict]:
    """The log of the run ``out`` holds, if it is this run's; an error if it is another's."""
    path = out / LOG
    if not path.exists():
        return None
    try:
        log = json.loads(path.read_text())
        theirs = log["identity"]
        log["steps"][0]["plan"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ConfigError(f"{path}: not a log of `mobilec adapt` ({e}); give another -o") from None
    if theirs != identity:
        diff = ", ".join(f"{k} {theirs.get(k)!r} there, {v!r} here" for k, v in identity.items() if theirs.get(k) != v)
        raise ConfigError(f"{out} holds another adaptation ({diff}); give another -o, or the same settings to resume")
    if not (out / WEIGHTS).exists() or not (out / START).exists():
        raise ConfigError(f"{out}: {LOG} without {WEIGHTS} / {START}; give another -o")
    return log

