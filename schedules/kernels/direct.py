"""kxk convolutions, depthwise or full (the stem): NHWC (a row of pixels x vectors of channels,
taps unrolled) and the imported-NCHW kernels (for comparison builds)."""

from __future__ import annotations

import math

from tvm.s_tir import Schedule

from mobilec.schedules.loops import (MAX_UNROLLED_TAPS, CpuParams, choose, loop_extent, register_run, row_tile,
                                    tile_reduction)
from mobilec.schedules.lowering import PARTITION
from mobilec.schedules.tile_cost import divisors


DEPTHWISE_ACCUMULATORS = 8  # measured (AVX2, Large): 1 -> 4 -> 8 took its depthwise kernels 0.90 -> 0.82 -> 0.75 ms


def schedule_nchw(sch: Schedule, block, epilogue, pad, cpu: CpuParams, depthwise: bool) -> str:
    """kxk conv (depthwise or full): output rows vectorised, output channels across registers."""
    n, f, y, x = (loop_extent(sch, l) for l in sch.get_loops(block)[:4])
    # power-of-two vectors dividing the row; else the whole (short) row, which LLVM splits
    col = next((c for c in (2 * cpu.lanes, cpu.lanes, cpu.lanes // 2) if x % c == 0),
               x if x <= 2 * cpu.lanes else cpu.lanes)
    vectors = -(-col // cpu.lanes)
    rows = 1 if depthwise else row_tile(f, max(1, min(4, (cpu.registers - 4) // vectors)))
    padded = loop_extent(sch, sch.get_loops(pad)[3]) if pad is not None else 0
    if padded >= 2 * x + 1 and padded % 2 == 0:
        # stride 2: even and odd padded columns stored apart (the staging copy walks that layout),
        # so a row of taps is one contiguous load instead of a gather of every other element
        deinterleave = lambda n_, c, h, w: (n_, c, h, w % 2, w // 2)  # noqa: E731
        sch.transform_layout(pad, ("write", 0), deinterleave)
        sch.transform_block_layout(pad, deinterleave)
    # independent accumulators to hide FMA latency: more output rows per tile (their taps share
    # input rows, which LLVM loads once)
    ytile = row_tile(y, max(1, DEPTHWISE_ACCUMULATORS // (vectors * rows)))
    tile_reduction(sch, block, [1, rows, ytile, col], cpu, epilogue, pad, pad_at_channel=depthwise)
    what = f"{ytile} rows x {col} columns" if depthwise else f"{rows} channels x {ytile}x{col} columns"
    return f"{'depthwise' if depthwise else 'direct'} {what}"


def schedule_nhwc(sch: Schedule, block, epilogue, pad, cpu: CpuParams, depthwise: bool) -> str:
    """NHWC kxk conv (depthwise, grouped or full): output channels vectorised (contiguous in the input,
    the HWIO weights and the output at any map size, any stride), pixels of an output row across
    registers; the taps unrolled so each tap's weight vector is loaded once per tile. The zero
    border is a condition on the row and column only (uniform across the vector). A full conv
    with more than ``MAX_UNROLLED_TAPS`` taps x input channels (ResNet's 3x3 over 64-512) keeps its
    input channels a loop inside the unrolled taps, and reads a padded copy of its input staged
    once, so no border condition sits in that loop (56x56x64 3x3: 2.29 -> 2.02 ms on one thread).
    A grouped conv (RegNet's 8 channels per group) is scheduled as a full one whose vector of
    output channels stays inside one group."""
    loops = sch.get_loops(block)  # n, y, x, f, ry, rx, rc
    n, y, x, f = (loop_extent(sch, l) for l in loops[:4])
    cpu = cpu.for_channels(f)
    vectors = next((v for v in (2, 1) if f % (v * cpu.lanes) == 0), 0)
    cols = vectors * cpu.lanes if vectors else register_run(f, cpu)  # MixNet's 90 channels: 15 on AVX-512
    per_group = loop_extent(sch, loops[6])
    grouped = depthwise and per_group > 1  # a grouped conv: each output channel reads per_group inputs
    if grouped:
        # a vector of output channels within one group reads one input value per step (a
        # broadcast); across two groups it would read two (a shuffle per multiply-add)
        cols = next((c for c in (cols, cols // 2, cols // 4) if c and per_group % c == 0 and f % c == 0), cols)
        vectors = max(1, cols // cpu.lanes)
    if depthwise and not grouped and cpu.fma_by_lane and vectors == 2:
        # AArch64 loads apart from its multiply-adds: one vector of channels by twice the pixels
        # shares each input vector among more taps (3x3 s1: 39 loads per 72 multiply-adds, not 54);
        # x86 folds the loads into its FMAs and keeps two vectors
        vectors, cols = 1, cpu.lanes
    budget = max(1, (DEPTHWISE_ACCUMULATORS if depthwise and not grouped else cpu.registers - 4) // max(1, vectors))
    rows = row_tile(x, budget)
    deep = (not depthwise or grouped) and math.prod(loop_extent(sch, l) for l in loops[4:7]) > MAX_UNROLLED_TAPS
    if pad is not None and not deep:
        sch.compute_inline(pad)
    # the bigger operand is walked once, in the outer loop: rows of the map (then the weights of
    # every channel tile are read once per row), or channel tiles (then each tile's weights, read
    # once, serve every row): ResNet's 7x7x512 3x3 convs read 9.4 MB of weights 7 times in the
    # first order, 4.7 -> 2.2 ms each inside the network, where they are not in cache
    taps = math.prod(loop_extent(sch, l) for l in loops[4:6])
    order = [0, 3, 1, 2] if deep and choose(taps * f >= y * x) else [0, 1, 3, 2]
    # a channel count the vector does not divide leaves a lane predicate in the tile: taps unrolled
    # over it are minutes of LLVM (MixNet's 9x9 over 90 channels: 137 s), so they stay loops there
    inline = pad is not None and not deep
    # the zero border read in place (the padding inlined): the rows of the map walked in order in
    # chunks (the chunks and channel tiles parallel), so the rows and the tiles of each row split
    # into border and interior ones, the interior's taps without a condition (lowering.SplitBorders)
    tiles = -(-f // cols)  # channel tiles, parallel beside the chunks: enough work for every core twice
    chunk = next((r for r in reversed(divisors(y, y)) if r >= 3 and (y // r) * tiles >= 2 * cpu.cores), None) \
        if inline and order == [0, 1, 3, 2] else None
    serial = tile_reduction(sch, block, [1, 1, rows, cols], cpu, epilogue, pad=pad if deep else None,
                            outer_order=order, unroll_reduction=f % cols == 0,
                            serial_rows=(1, chunk) if chunk else None)
    if inline:
        for loop in serial:
            if loop_extent(sch, loop) > 2:
                sch.annotate(loop, PARTITION, 1)
    what = "grouped" if grouped else "depthwise" if depthwise else "direct"
    return f"{what} {rows} pixels x {cols} channels (NHWC)"
