"""1x1 convolutions: the NHWC kernel (a block of pixels x vectors of output channels, weights
packed per channel tile) and the imported-NCHW one (for comparison builds)."""

from __future__ import annotations

from tvm.s_tir import Schedule

from mobilec.schedules.loops import (CpuParams, MAX_ROW_TILE, choose, loop_extent, register_run, row_tile,
                                    tile_reduction)
from mobilec.schedules.tile_cost import LATENCY, best_tile, divisors


def nchw_tiles(f: int, y: int, x: int, k: int, cpu: CpuParams, ihwo: bool):
    """Candidate register tiles of a 1x1 conv, scored by useful multiply-adds per issue slot: a
    k-step costs max(vector FMAs, loads, LATENCY) (FMAs and loads both issue two per cycle on the
    cores we target; fewer than LATENCY independent accumulators leave the FMA pipes waiting),
    plus the tile's stores spread over the k steps (one vector store per accumulator, or one
    scalar store per lane when channels are vectorised but the output is NCHW); partly filled
    vectors count only their useful lanes.
    Returns (score, orientation, tiles, what)."""
    budget = cpu.registers - 2
    out = []
    # power-of-two vector tiles only: LLVM splits <24 x float> or <28 x float> into slow code
    for cols in [c for c in (cpu.lanes // 2, cpu.lanes, 2 * cpu.lanes, 4 * cpu.lanes) if x % c == 0]:
        vectors = -(-cols // cpu.lanes)
        for ytile in divisors(y, 4):
            for rows in divisors(f, budget):
                acc = rows * vectors * ytile
                if acc > budget:
                    continue
                score = rows * cols * ytile / (max(acc, vectors * ytile + rows, LATENCY) + acc / k)
                out.append((score, "nchw", [1, rows, ytile, cols], f"{rows} channels x {ytile}x{cols} pixels"))
    if ihwo:
        for vectors in (1,):  # measured: 14 pixels x 1 vector beats 7 x 2 by a third (AVX2, 14x14)
            if f % (vectors * cpu.lanes):
                continue
            for rows in divisors(x, budget // vectors):
                lanes = rows * vectors * cpu.lanes
                score = lanes / (max(rows * vectors, vectors + rows, LATENCY) + lanes / k)
                out.append((score, "nhwc", [1, 1, rows, vectors * cpu.lanes],
                            f"{rows} pixels x {vectors * cpu.lanes} channels"))
    if not out:  # no power-of-two vector divides either axis: the whole row (LLVM splits it)
        cols = x if x <= 4 * cpu.lanes else cpu.lanes
        rows = row_tile(f, max(1, budget // -(-cols // cpu.lanes)))
        out.append((0.0, "nchw", [1, rows, 1, cols], f"{rows} channels x 1x{cols} pixels"))
    return max(out, key=lambda c: (c[0], c[2][-1]))


def schedule_nchw(sch: Schedule, block, epilogue, cpu: CpuParams, ihwo: bool) -> str:
    """1x1 conv as a GEMM, out[f, y, x] = sum_c W[c, f] * in[c, y, x]: either output channels
    across registers and pixels of a row vectorised, or (on maps too narrow to vectorise, 14x14
    and 7x7) pixels across registers and output channels vectorised, the weights IHWO so a vector
    of channels is one contiguous load."""
    n, f, y, x, k = (loop_extent(sch, l) for l in sch.get_loops(block)[:5])
    _, orientation, tiles, what = nchw_tiles(f, y, x, k, cpu, ihwo)
    if orientation == "nhwc":
        sch.reorder(*[sch.get_loops(block)[i] for i in (0, 2, 3, 1)])  # n, y, x, f
        # the accumulator channels-last too, so a vector of channels is one register
        sch.transform_layout(block, ("write", 0), lambda n_, c, h, w: (n_, h, w, c))
    # channels-vectorised: one block of weights (k x vector) stays in L1 over all pixel tiles
    tile_reduction(sch, block, tiles, cpu, epilogue, outer_order=[0, 3, 1, 2] if orientation == "nhwc" else None)
    return f"pointwise {what}"


def nhwc_tiles(y: int, x: int, f: int, k: int, cpu: CpuParams) -> tuple[float, int, int, int]:
    """(score, rows, pixels, vectors) of the register tile of an NHWC 1x1 conv: ``rows`` x
    ``pixels`` of the map across registers (one broadcast input value each), output channels
    vectorised (one weight load per vector), scored like ``nchw_tiles`` plus the broadcasts'
    share of the vector pipes (``tile_cost``): a 2x2-pixel x 2-vector tile beats a row of 14
    pixels x 1 vector by 1.3x (AVX2, 14x14x112->672). Accumulators, weight vectors and the
    broadcast must fit the register file (one spilled accumulator measured 1.8x slower).
    (0.0, 1, 1, 0) when no whole vector of channels
    divides ``f``."""
    cpu = cpu.for_channels(f)
    by_lane = cpu.lanes if cpu.fma_by_lane and k % cpu.lanes == 0 else 0  # see schedule_nhwc
    # up to 4 vectors of channels; 6 where 32 registers hold broadcast tiles (AVX-512: 40-channel
    # kernels get 5 vectors x 4 pixels instead of 1 vector x 28 pixels)
    most = 6 if cpu.registers >= 32 and not cpu.fma_by_lane else 4
    best = best_tile(y, x, [v for v in range(1, most + 1) if f % (v * cpu.lanes) == 0],
                     lambda v: cpu.registers - v - (0 if by_lane else 1), k=k, by_lane=by_lane)
    if best is None:
        return 0.0, 1, 1, 0
    score, rows, pixels, v = best
    return score * cpu.lanes, rows, pixels, v


def nhwc_columns(y: int, x: int, f: int, k: int, cpu: CpuParams) -> tuple[int, int, int]:
    """(rows, pixels, channels) of the register tile of an NHWC 1x1 conv: ``nhwc_tiles``' whole
    vectors where some divide ``f``; else one register's run of channels (``register_run``:
    MixNet's grouped 100 channels take 10 on AVX-512, 5 on AVX2), its rows x pixels chosen as for
    one whole vector. Measured, AVX-512, 28x28x120 -> 20: 625 -> 60 us; 7x7x600 -> 100:
    932 -> 88 us; 14x14x61 -> 117: 624 -> 38 us (64 -> 128: 35 us)."""
    _, rows, pixels, vectors = nhwc_tiles(y, x, f, k, cpu)
    if vectors:
        return rows, pixels, vectors * cpu.for_channels(f).lanes
    by_lane = cpu.lanes if cpu.fma_by_lane and k % cpu.lanes == 0 else 0  # as nhwc_tiles
    tile = best_tile(y, x, [1], lambda v: cpu.registers - v - (0 if by_lane else 1), k=k, by_lane=by_lane)
    return tile[1], tile[2], register_run(f, cpu)


def schedule_nhwc(sch: Schedule, block, epilogue, cpu: CpuParams) -> str:
    """NHWC 1x1 conv, out[y, x, f] = sum_c in[y, x, c] * W[c, f]: a block of rows x pixels across
    registers (2-D tiles: a tile over the fused pixel index costs a div/mod per tile, measured 2x
    on 112x112), output channels vectorised and stored contiguously, the weights of a channel
    tile packed contiguously (``defaults.pack_for_tiles``, for whichever tile). Every tile is a parallel task; the
    larger of weights and map is walked once, in the outer loop."""
    loops = sch.get_loops(block)  # n, y, x, f, ry, rx, rc
    n, y, x, f = (loop_extent(sch, l) for l in loops[:4])
    k = loop_extent(sch, loops[6])
    rows, pixels, cols = nhwc_columns(y, x, f, k, cpu)
    cpu = cpu.for_channels(f)
    # the bigger operand streams through once: the weights (channel tiles outside) or the map
    # (pixel tiles outside, each writing whole lines of output)
    order = [0, 3, 1, 2] if choose(f >= y * x) else [0, 1, 2, 3]  # weights k*f against map y*x*k
    # searched: rows up to the heuristic's (a block of rows x 16 pixels x 4 vectors unrolls into
    # more code than LLVM compiles in a tuning trial's time), pixels and vectors as wide as before
    tile_reduction(sch, block, [1, rows, pixels, cols], cpu, epilogue, outer_order=order, parallel_all=True,
          most=[1, rows, MAX_ROW_TILE, 4 * cpu.lanes], lane_read=0 if cpu.fma_by_lane else None)
    return f"pointwise {rows}x{pixels} pixels x {cols} channels (NHWC)"
