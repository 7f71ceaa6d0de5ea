"""Timing engines fairly on one machine: the one routine every measurement in mobilec uses
(``mobilec bench --vs``, the demo, the tuning verdict, the in-network recheck, the kernel-level
confirmation and the benchmarks). Engines alternate in blocks of calls, in a seeded shuffled order
each round, with a short idle before each block; numpy only."""

from __future__ import annotations

import math
import random
import time
from typing import Callable

import numpy as np

from mobilec.errors import ConfigError


def blocks_for(repeat: int) -> tuple[int, int]:
    """(rounds, calls per block) giving at least ``repeat`` timed calls per engine: blocks of up
    to 5 calls, and as many rounds as that allows (so the engines alternate often)."""
    if repeat < 1:
        raise ConfigError(f"repeat={repeat}: time at least one call")
    block = min(5, max(1, repeat // 10))
    return math.ceil(repeat / block), block


def interleaved(engines: dict[str, Callable[[], object]], warmup: int = 5, rounds: int = 10,
                block: int = 5, min_seconds: float = 0.0) -> dict[str, dict]:
    """Time several engines fairly on one machine: ``warmup`` untimed calls of each, then ``rounds``
    rounds in which every engine runs a block of ``block`` timed calls, in a new order each round
    (``alternating``). Engines alternate in blocks because a thread pool still spinning after one
    engine's last call (TVM's and onnxruntime's both spin) steals cores from whatever runs next;
    the first call of a block pays for it and the block's median drops it. Per engine: the median
    of the block medians, their 10th percentile, min and max over every call (ms); rounds go on
    until ``min_seconds`` have passed (``alternating``)."""
    if warmup < 0 or rounds < 1 or block < 1:
        raise ConfigError(f"warmup={warmup}, rounds={rounds}, block={block}: need warmup >= 0, rounds >= 1, block >= 1")
    names = list(engines)
    for i in range(warmup):
        for name in names[i % len(names):] + names[:i % len(names)]:
            engines[name]()

    def timed(fn):
        def run_block() -> list[float]:
            ms = []
            for _ in range(block):
                t = time.perf_counter()
                fn()
                ms.append((time.perf_counter() - t) * 1e3)
            return ms
        return run_block

    return alternating({name: timed(fn) for name, fn in engines.items()}, rounds, min_seconds)


def round_order(names: list, r: int) -> list:
    """The order of round ``r``: a seeded shuffle of ``names``, the same every run. Not a rotation:
    a rotation keeps the cyclic order, so with three or more engines each one always runs right
    after the same other engine and pays for that engine's spinning pool in every round."""
    return random.Random(r).sample(list(names), len(names))


SETTLE_S = 0.02  # idle between blocks: longer than TVM's, onnxruntime's and OpenMP's spin-waits


QUIET_PERCENTILE = 10  # ``quiet_ms``: this percentile of the block medians


def alternating(blocks: dict[str, Callable[[], list[float]]], rounds: int, min_seconds: float = 0.0) -> dict[str, dict]:
    """The alternation ``interleaved`` times with: ``rounds`` rounds, each engine's ``blocks[name]()``
    once per round (returning its calls' times, ms), in a new order each round (``round_order``).
    Also for engines timed elsewhere (a device's own timer: one median per block). More rounds
    follow until ``min_seconds`` have passed.

    Per engine: ``median_ms``, the median of the block medians; ``quiet_ms``, their 10th
    percentile: the device at its quietest, for comparing times taken minutes apart on a machine
    whose neighbours come and go (a shared VM read 0.76-0.95 ms for a MobileNetV3-Small in its
    quiet seconds, and about 1.8 ms for 1-5 s at a time, several times a minute: measured);
    ``min_ms`` and ``max_ms`` over every call.

    Each block starts after ``SETTLE_S`` idle. With a rotation instead of ``round_order``, mobilec
    fp32 timed after onnxruntime's int8 read 4.3-4.5 ms where it runs 2.9 (measured)."""
    names = list(blocks)
    medians: dict[str, list[float]] = {n: [] for n in names}
    calls: dict[str, list[float]] = {n: [] for n in names}
    started, r = time.monotonic(), 0
    while r < rounds or time.monotonic() - started < min_seconds:
        for name in round_order(names, r):
            time.sleep(SETTLE_S)  # the last engine's pool stops spinning before this one is timed
            ms = blocks[name]()
            medians[name].append(float(np.median(ms)))
            calls[name] += ms
        r += 1
    return {n: {"median_ms": float(np.median(medians[n])),
                "quiet_ms": float(np.percentile(medians[n], QUIET_PERCENTILE)),
                "min_ms": min(calls[n]), "max_ms": max(calls[n]), "rounds": r, "block": len(calls[n]) // r,
                "calls": len(calls[n])} for n in names}
