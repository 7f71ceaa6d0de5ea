"""Every other kernel (SE's pool and gate, pools, reshapes, elementwise): loops fused, parallel
and vectorised over the contiguous axis."""

from __future__ import annotations

import tvm
from tvm.s_tir import Schedule

from mobilec.schedules.loops import CpuParams, child_blocks, loop_extent, vectorize_inner


def schedule(sch: Schedule, cpu: CpuParams, done: set[str] = frozenset()) -> None:
    """Everything else (SE's pool and gating; pools; reshapes): each block's spatial loops
    fused and parallel, the innermost contiguous loop vectorised where it is spatial."""
    for block in child_blocks(sch):
        if sch.get(block).name_hint in done:
            continue
        loops = sch.get_loops(block)
        kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
        if len(loops) != len(kinds):
            continue
        spatial = [l for l, k in zip(loops, kinds) if k == 0]
        if not spatial or len(spatial) != kinds.count(0):
            continue
        plane = loop_extent(sch, spatial[-1]) * loop_extent(sch, spatial[-2]) if len(spatial) >= 2 else 0
        axis = _contiguous_in_input(sch, block, cpu) if 2 not in kinds else None
        if axis is not None:
            # a short axis moved innermost (the input's NCHW -> NHWC with 3 channels): vectors along
            # the input's contiguous axis, the short axis unrolled around them, so each load is one
            # vector and the stores are strided (measured, 224x224x3: 61-66 -> 8 us, AVX2 and AVX-512)
            outer = [l for n, l in enumerate(spatial[:-1]) if n != axis]
            o, i = sch.split(spatial[axis], [None, 2 * cpu.lanes])
            sch.reorder(*outer, o, spatial[-1], i)
            fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
            if loop_extent(sch, fused) >= 2 * cpu.cores:
                sch.parallel(fused)
            sch.unroll(spatial[-1])
            sch.vectorize(i)
        elif 2 not in kinds and len(spatial) >= 3 and _by_innermost(sch, spatial, plane, cpu):
            # channels last (SE's gate on an NHWC map, 120 channels): vectors of whole channels,
            # so what varies by channel is one contiguous load; a vector over the fused plane would
            # wrap across pixels and gather it (28x28x120 gate: measured 2-3x slower)
            outer = sch.fuse(*spatial[:-2]) if len(spatial) > 3 else spatial[0]  # rows outside
            if loop_extent(sch, outer) >= 2 * cpu.cores:
                sch.parallel(outer)
            vectorize_inner(sch, block, cpu.lanes)  # the channels
        elif 2 not in kinds and len(spatial) >= 3 and _short_rows(sch, block, spatial, cpu):
            # a few channels that no vector divides, every read along them (a concatenation's or a
            # split's part of 12 channels): a vector per pixel; one over the fused plane would
            # gather and scatter across pixels (56x56x12 parts: 50 -> 29 us)
            outer = sch.fuse(*spatial[:-1])
            if loop_extent(sch, outer) >= 2 * cpu.cores:
                outer = sch.split(outer, [2 * cpu.cores, None])[0]
                sch.parallel(outer)
            vectorize_inner(sch, block, cpu.lanes)
        elif 2 not in kinds and len(spatial) >= 3 and plane >= cpu.lanes:
            # per channel plane: what varies by channel (SE's gate) is one broadcast, not a gather
            outer = sch.fuse(*spatial[:-2]) if len(spatial) > 3 else spatial[0]
            sch.fuse(*spatial[-2:])  # the plane: contiguous, vectorised
            if loop_extent(sch, outer) >= 2 * cpu.cores:
                sch.parallel(outer)
            vectorize_inner(sch, block, cpu.lanes)
        elif 2 not in kinds:
            fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
            tile = cpu.lanes * 4
            if loop_extent(sch, fused) > tile * 4:
                outer, inner = sch.split(fused, [None, tile])
                sch.parallel(outer)
                sch.vectorize(inner)
            elif loop_extent(sch, fused) >= cpu.lanes:
                sch.vectorize(fused)
        elif kinds[: len(spatial)] == [0] * len(spatial) and channels_last_reduction(sch, block, cpu):
            # a pool over NHWC pixels: the pixel loops outside, a vector of channels accumulated
            reduce = loops[len(spatial):]
            sch.reorder(*reduce, spatial[-1])
            vectorize_inner(sch, block, cpu.lanes)
            sch.decompose_reduction(block, reduce[0])  # the init copies the vectorised loop
        elif kinds[: len(spatial)] == [0] * len(spatial):
            busy = [l for l in spatial if loop_extent(sch, l) > 1]
            if busy:
                fused = sch.fuse(*busy) if len(busy) > 1 else busy[0]
                if loop_extent(sch, fused) >= 2 * cpu.cores:
                    sch.parallel(fused)


def _by_innermost(sch: Schedule, spatial, plane: int, cpu: CpuParams) -> bool:
    """Whether to vectorise the innermost axis alone rather than the fused last two: it holds
    whole vectors, and the piece ``vectorize_inner`` would take of the fused plane does not divide
    it (so a vector would wrap from one pixel's channels into the next pixel's)."""
    inner = loop_extent(sch, spatial[-1])
    piece = next((v * cpu.lanes for v in (4, 2, 1) if plane % (v * cpu.lanes) == 0), None)
    return inner % cpu.lanes == 0 and plane > 4 * cpu.lanes and piece is not None and inner % piece != 0


def _short_rows(sch: Schedule, block, spatial, cpu: CpuParams) -> bool:
    """The innermost axis is short and no vector divides it, and every full-rank buffer the block
    reads or writes is indexed by it innermost (a copy of a few channels per pixel)."""
    inner = loop_extent(sch, spatial[-1])
    if inner % cpu.lanes == 0 or inner > 4 * cpu.lanes:
        return False
    b = sch.get(block)
    last = b.iter_vars[-1].var
    rank = len(b.writes[0].region) if len(b.writes) == 1 else 0
    regions = [r for r in list(b.reads) + list(b.writes) if len(r.region) == rank]
    return rank >= 3 and all(_indexed_by(r.region[-1].min, last) for r in regions)


def _indexed_by(index, var) -> bool:
    """``index`` is ``var`` or ``var`` plus a constant."""
    if index.same_as(var):
        return True
    return isinstance(index, tvm.tirx.Add) and index.a.same_as(var) and isinstance(index.b, tvm.tirx.IntImm)


def _contiguous_in_input(sch: Schedule, block, cpu: CpuParams):
    """For an elementwise block that writes a short innermost axis (fewer than a vector's lanes)
    and reads its one full-rank input along another axis innermost (a layout transpose, with or
    without arithmetic inlined into it): the index of that axis's loop, when two vectors divide
    it; else None."""
    b = sch.get(block)
    loops = sch.get_loops(block)
    if len(loops) != len(b.iter_vars) or len(b.writes) != 1 or len(loops) < 2:
        return None
    rank = len(b.writes[0].region)
    full = [r for r in b.reads if len(r.region) == rank]
    if len(full) != 1 or int(b.iter_vars[-1].dom.extent) >= cpu.lanes:
        return None
    last = full[0].region[-1].min
    axis = next((i for i, iv in enumerate(b.iter_vars) if iv.var.same_as(last)), None)
    if axis is None or axis == len(loops) - 1 or int(b.iter_vars[axis].dom.extent) % (2 * cpu.lanes):
        return None
    return axis


def channels_last_reduction(sch: Schedule, block, cpu: CpuParams) -> bool:
    """A reduction whose only spatial axis of more than one element is the innermost index of
    what it reads (a global pool of an NHWC map): worth vectorising over that axis."""
    b = sch.get(block)
    spatial = [iv for iv in b.iter_vars if int(iv.iter_type) == 0]
    busy = [iv for iv in spatial if int(iv.dom.extent) > 1]
    if len(busy) != 1 or not busy[0].same_as(spatial[-1]) or int(busy[0].dom.extent) % cpu.lanes:
        return False
    last = b.reads[0].region[-1].min if b.reads else None
    return last is not None and last.same_as(busy[0].var)
