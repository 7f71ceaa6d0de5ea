"""Channel surgery on a MobileNetV3 plan: which widths can shrink, and the weights carried over.

Every tensor dimension that counts channels belongs to a *space*: the stem's output, a block's
expansion, a block's squeeze, the last conv, and so on. A residual connection makes a block's
output the same space as its input, so the widths it ties shrink together, and one set of kept
channels serves every layer that reads or writes them. NetAdapt shrinks one space at a time:
an expansion (``exp:i``) or a bottleneck width (``width:j``, where ``j`` is the first layer that
writes it: -1 for the stem).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mobilec.frontends.mobilenetv3 import Plan

QUANTUM = 8  # widths move in steps of 8 channels: whole NEON, AVX2 and AVX-512 vectors of float32
# Layers whose filters are ranked when their output space shrinks (not depthwise, BN or SE gates).
_RANKED = ("stem.0", "expand.0", "project.0")


@dataclass(frozen=True)
class Spaces:
    """The channel spaces of a plan: per layer prefix, the space of its output and of its input
    channels (None: not channels, e.g. RGB, or a depthwise conv's single input per group)."""

    layers: dict[str, tuple[str, str | None]]
    widths: dict[str, int]

    def shrinkable(self) -> list[str]:
        """The spaces NetAdapt may shrink: every expansion, every bottleneck width."""
        return [s for s in self.widths if s.startswith(("exp:", "width:"))]


def spaces(plan: Plan) -> Spaces:
    """The spaces of a classifier's layers, or of LR-ASPP's (its backbone under ``backbone.``,
    its head reading the last conv and the 1/8 features)."""
    seg = plan.task == "segmentation"
    p0 = "backbone." if seg else ""
    layers: dict[str, tuple[str, str | None]] = {}
    widths: dict[str, int] = {"width:-1": plan.stem}
    layers[p0 + "stem.0"] = layers[p0 + "stem.1"] = ("width:-1", None)
    current, outs = "width:-1", []
    for i, b in enumerate(plan.blocks):
        p = f"{p0}blocks.{i}."
        exp = f"exp:{i}" if b.expand else current
        if b.expand:
            widths[exp] = b.exp
            layers[p + "expand.0"] = (exp, current)
            layers[p + "expand.1"] = (exp, None)
        layers[p + "depthwise.0"] = layers[p + "depthwise.1"] = (exp, None)
        if b.se:
            widths[f"se:{i}"] = b.se
            layers[p + "se.reduce"] = (f"se:{i}", exp)
            layers[p + "se.expand"] = (exp, f"se:{i}")
        out = current if b.residual else f"width:{i}"
        widths[out] = b.out
        layers[p + "project.0"] = (out, exp)
        layers[p + "project.1"] = (out, None)
        current = out
        outs.append(out)
    widths["last"] = plan.last
    layers[p0 + "last_conv.0"] = ("last", current)
    layers[p0 + "last_conv.1"] = ("last", None)
    if seg:
        layers["cbr.0"] = layers["scale"] = ("head", "last")
        layers["cbr.1"] = ("head", None)
        layers["low_classifier"] = ("classes", outs[plan.low_tap()])
        layers["high_classifier"] = ("classes", "head")
    else:
        layers["classifier.0"] = ("head", "last")
        layers["classifier.3"] = ("classes", "head")
    return Spaces(layers, widths)


def describe(space: str) -> str:
    kind, _, index = space.partition(":")
    if kind == "exp":
        return f"block {index} expansion"
    return "stem width" if index == "-1" else f"width from block {index}"


def shrink(plan: Plan, space: str, width: int) -> Plan:
    """``plan`` with ``space`` (``exp:i`` or ``width:j``) narrowed to ``width`` channels."""
    kind, _, index = space.partition(":")
    if kind == "exp":
        i = int(index)
        return replace(plan, blocks=plan.blocks[:i] + (replace(plan.blocks[i], exp=width),) + plan.blocks[i + 1:])
    current, blocks, stem = "width:-1", [], plan.stem
    if space == current:
        stem = width
    for i, b in enumerate(plan.blocks):
        if space == current and not b.expand:
            b = replace(b, exp=width)  # the depthwise runs on the input width
        out = current if b.residual else f"width:{i}"
        if out == space:
            b = replace(b, out=width)
        blocks.append(b)
        current = out
    return replace(plan, stem=stem, blocks=tuple(blocks))


def ranked(model: torch.nn.Module, space: str, keep: int) -> torch.Tensor:
    """The ``keep`` channels of ``space`` with the largest L1 norm of the filters that write them
    (summed over every layer writing the space), in their original order."""
    sp = spaces(model.plan)
    state = model.state_dict()
    score = torch.zeros(sp.widths[space])
    for prefix, (out, _) in sp.layers.items():
        if out == space and prefix.endswith(_RANKED):
            score += state[prefix + ".weight"].abs().flatten(1).sum(1)
    return torch.sort(torch.topk(score, keep).indices).values


def carry(model: torch.nn.Module, new: torch.nn.Module, kept: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Copy ``model``'s weights into ``new`` (built from a shrunk plan): every tensor sliced to the
    channels ``kept`` of each space (all of a space not in ``kept``)."""
    layers = spaces(model.plan).layers
    old, state = model.state_dict(), new.state_dict()
    for name, target in state.items():
        prefix, _, _ = name.rpartition(".")
        out, inp = layers[prefix]
        value = old[name]
        if value.ndim >= 1 and out in kept:
            value = value.index_select(0, kept[out])
        if value.ndim >= 2 and inp is not None and inp in kept:
            value = value.index_select(1, kept[inp])
        if value.shape != target.shape:
            raise ValueError(f"carrying {name}: {tuple(value.shape)} vs {tuple(target.shape)} (a bug in mobilec)")
        state[name] = value.clone()
    new.load_state_dict(state)
    return new
