"""NetAdapt (Yang et al., 2018) as "Searching for MobileNetV3" uses it, scored by latency measured
on the device with mobilec's own kernels (``latency.py``).

Each step makes one proposal per shrinkable width (an expansion, or a bottleneck width that
residual connections tie across blocks): the fewest channels removed, in steps of 8, that cut
the table's predicted latency by at least delta. Each proposal inherits the current network's
filters with the largest L1 norm (``surgery.py``), is fine-tuned a few steps and scored on
held-out images; the proposal with the largest dAccuracy / |dLatency| is kept. The steps stop
when the predicted latency meets the target; a longer fine-tune ends the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from mobilec.adapt import surgery
from mobilec.adapt.latency import LatencyTable, key_of, layers, out_size
from mobilec.frontends.mobilenetv3 import Plan

ROUNDS = 3  # measured guesses per width and step before a width sits the step out
REWARD_W = -0.15  # the paper's exponent for ACC(m) x (LAT(m) / TAR)^w


@dataclass(frozen=True)
class Candidate:
    space: str
    width: int  # the space's new width
    plan: Plan
    predicted_ms: float


def _madds(layer: dict) -> float:
    """A layer's multiply-adds: only to guess how many channels to remove before measuring."""
    kind, r = layer["layer"], layer.get("res", 1)
    if kind == "block":
        exp, k = layer["exp"], layer["kernel"]
        o = out_size(r, k, layer["stride"] if layer["dilation"] == 1 else 1, layer["dilation"])
        expand = layer["cin"] * exp * r * r if layer["expand"] else 0
        return expand + exp * k * k * o * o + 2 * exp * layer["se"] + exp * layer["out"] * o * o
    if kind == "stem":
        return 27 * layer["out"] * out_size(r, 3, 2) ** 2
    if kind == "head":
        return layer["cin"] * layer["last"] * r * r + layer["last"] * layer["head"] + layer["head"] * layer["classes"]
    return 0.0


def _guess_ms(table: LatencyTable, plan: Plan, new: Plan, input_size: int) -> float:
    """``new``'s latency guessed from ``plan``'s measured layers, each scaled by its multiply-adds."""
    old_layers = layers(plan, input_size)
    total = 0.0
    for old, layer in zip(old_layers, layers(new, input_size)):
        ms = table.entries[key_of(old)]["ms"]
        total += ms * (_madds(layer) / _madds(old) if layer not in old_layers and _madds(old) else 1.0)
    return total


def candidates(plan: Plan, table: LatencyTable, input_size: int, delta_ms: float,
               say: Callable[[str], None]) -> list[Candidate]:
    """Per shrinkable width, the narrowest cut (in channels) whose measured prediction saves at
    least ``delta_ms``. Guesses come from multiply-adds, then from what was measured; every guess
    of a round is measured in one batch; a width with no such cut after ``ROUNDS`` sits out."""
    table.measure([plan], input_size, say)
    now = table.predict(plan, input_size)
    spaces = surgery.spaces(plan)
    widths, q = spaces.widths, surgery.QUANTUM
    open_spaces = {s: None for s in spaces.shrinkable() if widths[s] > q}
    found: dict[str, Candidate] = {}
    for _ in range(ROUNDS):
        guesses = {}
        for space, last in open_spaces.items():
            w = widths[space]
            if last is None:  # first guess: multiply-adds
                one = now - _guess_ms(table, plan, surgery.shrink(plan, space, w - q), input_size)
                k = math.ceil(delta_ms / one) if one > 0 else 1
            else:  # extrapolate from the cut measured for `last` channels fewer, at most doubling
                removed, cut = last
                k = math.ceil(removed / q * delta_ms / cut) if cut > 0 else removed // q * 2
                k = min(max(k, removed // q + 1), 2 * removed // q)
            k = min(k, (w - q) // q)
            if k >= 1 and (last is None or k * q > last[0]):
                guesses[space] = w - k * q
        if not guesses:
            break
        plans = {s: surgery.shrink(plan, s, n) for s, n in guesses.items()}
        table.measure(list(plans.values()), input_size, say)
        for space, p in plans.items():
            ms = table.predict(p, input_size)
            removed = widths[space] - guesses[space]
            if now - ms >= delta_ms:
                found[space] = Candidate(space, guesses[space], p, ms)
                del open_spaces[space]
            else:
                open_spaces[space] = (removed, now - ms)
        open_spaces = {s: v for s, v in open_spaces.items() if s not in found and s in guesses}
    return sorted(found.values(), key=lambda c: list(widths).index(c.space))


def reward(accuracy: float, latency_ms: float, target_ms: float) -> float:
    return accuracy * (latency_ms / target_ms) ** REWARD_W
