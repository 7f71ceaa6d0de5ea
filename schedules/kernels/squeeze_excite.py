"""Squeeze-and-excite's two FCs: 1x1 convolutions on a pooled 1x1 map, output channels
vectorised, the weights packed per channel tile."""

from __future__ import annotations

from tvm.s_tir import Schedule

from mobilec.schedules.loops import CpuParams, divisor_tile, is_nhwc, loop_extent, tile_reduction


def columns(f: int, cpu: CpuParams) -> int:
    return divisor_tile(f, cpu.lanes, 2)


def schedule_fc(sch: Schedule, block, cpu: CpuParams) -> None:
    """SE's 1x1 convs on a pooled [1, C, 1, 1] vector: output channels vectorised (IHWO weights),
    the input channel loop outside."""
    loops = sch.get_loops(block)
    if is_nhwc(sch.get(block).name_hint):  # already n, y, x, f / ry, rx, rc
        f, k = loop_extent(sch, loops[3]), loop_extent(sch, loops[6])
    else:
        sch.reorder(loops[0], loops[2], loops[3], loops[1])
        f, k = loop_extent(sch, loops[1]), loop_extent(sch, loops[4])
    # a small FC is not worth a fork-join; a big one streams its weights on every core
    tile_reduction(sch, block, [1, 1, 1, columns(f, cpu)], cpu, parallel=f * k >= 1 << 15)


def is_fc(sch: Schedule, block) -> bool:
    """A 1x1 conv on a 1x1 map with IHWO (NCHW) or HWIO (NHWC) weights."""
    b = sch.get(block)
    out = [int(d) for d in b.writes[0].source.shape]
    if is_nhwc(b.name_hint):  # HWIO weights, read after FC1's inlined bias and ReLU
        weights = [[int(d) for d in r.source.shape] for r in b.reads]
        return (b.name_hint.startswith("conv2d") and out[1:3] == [1, 1]
                and any(len(w) == 4 and w[:2] == [1, 1] and w[3] == out[3] for w in weights))  # HWIO
    weight = [int(d) for d in b.reads[-1].source.shape]
    return (b.name_hint.startswith("conv2d") and out[2:] == [1, 1] and len(weight) == 4
            and weight[1:3] == [1, 1] and len(sch.get_loops(block)) == 7)
