"""The issue-slot model the default schedules choose register tiles by (fp32 FMA tiles in
``defaults``, integer dot-product tiles in ``integer``)."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

LATENCY = 8  # independent FMAs in flight to keep two FMA pipes busy (4-cycle latency; measured on
# Zen 3: 8 accumulators run a 14x14x112->672 pointwise as fast as 12)
# a broadcast input takes a vector pipe slot too: Zen 3 issues FMAs on two of its three FP pipes
# and broadcast loads on two of them (benchmarks/issue_rates.py: one broadcast per FMA ran 1.5-2.0
# FMAs a cycle from run to run, one per two FMAs 2.0 in every run); Cortex-A76's LD1R also issues
# on its V pipes. In FMA-issue units: 2/3 a slot
BROADCAST_SLOTS = 2 / 3
STEP = 1  # the reduction loop's own increment and branch, one slot a step: of two tiles that keep
# the pipes equally busy the bigger one wins (llvm-mca, Cortex-A76: 2x2 pixels x 2 vectors of 4
# lanes left its FMA pipes 67% busy where 1x14 x 2 filled 88%)


def tile_score(acc: int, broadcasts: int, loads: int, ops: int = 1, k: int = 0) -> float:
    """Multiply-add vectors per issue slot of one reduction step of a register tile: ``acc``
    accumulators (``ops`` vector instructions each), ``broadcasts`` broadcast inputs and ``loads``
    weight vectors; FMAs and loads both issue two per cycle, broadcasts also take a vector-pipe
    slot (``BROADCAST_SLOTS``), fewer than ``LATENCY`` accumulators leave the pipes waiting, and
    each step costs the loop's own ``STEP``; the tile's stores are spread over ``k`` steps."""
    issue = max(acc * ops, broadcasts + loads, LATENCY, BROADCAST_SLOTS * (acc * ops + broadcasts))
    return acc / (issue + STEP + (acc / k if k else 0))


def divisors(n: int, most: int) -> list[int]:
    return [d for d in range(1, min(n, most) + 1) if n % d == 0]


def best_tile(y: int, x: int, vectors: Iterable[int], accumulators: Callable[[int], int], ops: int = 1,
              k: int = 0, most: Optional[int] = None, by_lane: int = 0) -> Optional[tuple[float, int, int, int]]:
    """(score, rows, pixels, vectors) of the best-scoring register tile of rows x pixels of a y x x
    map (each dividing its axis, at most ``most``) x one of ``vectors`` vectors of output channels,
    with at most ``accumulators(vectors)`` accumulators; ties go to fewer rows (one row's pixels
    are adjacent in memory), then more accumulators. None when no vector count is given.
    ``by_lane``: the inputs are not broadcast but loaded ``by_lane`` reduction steps at a time into
    a register per pixel, which the multiply-adds read by element (``loops.tile_reduction``'s
    ``lane_read``): a plain load per pixel every ``by_lane`` steps, and a register per pixel."""
    best = None
    for v in vectors:
        spare = accumulators(v) // (v + 1 if by_lane else v)  # pixels (by lane: and an input register each)
        for rows in divisors(y, min(spare, most or spare)):
            for pixels in divisors(x, min(spare // rows, most or spare)):
                acc = rows * pixels * v
                if by_lane:  # of equal tiles, the one loading less (fewer input registers)
                    loads = v + rows * pixels / by_lane
                    score, fewer_loads = tile_score(acc, 0, loads, ops, k), -loads
                else:
                    score, fewer_loads = tile_score(acc, rows * pixels, v, ops, k), 0
                tile = (score, -rows, acc, fewer_loads, rows, pixels, v)
                best = tile if best is None else max(best, tile)
    return None if best is None else (best[0], *best[4:])
