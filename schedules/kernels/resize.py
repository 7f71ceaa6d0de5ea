"""LR-ASPP's bilinear upsampling (``compiler/resize.py``'s two separable passes)."""

from __future__ import annotations

from tvm.s_tir import Schedule

from mobilec.schedules.loops import CpuParams, auto_inline, child_blocks, loop_extent, vectorize_inner


def schedule(sch: Schedule, cpu: CpuParams) -> str:
    """``compiler/resize.py``'s two passes, each kept as its own loop nest (inlining the first
    into the second would bring back four gathers per output): per pass, every loop but the
    contiguous innermost parallel, the innermost (fused with the one above when it is shorter
    than a vector, e.g. NHWC channels) vectorised."""
    blocks = child_blocks(sch)
    auto_inline(sch, {n for n in (sch.get(b).name_hint for b in blocks) if n.startswith("resize_")})
    for block in child_blocks(sch):
        loops = sch.get_loops(block)
        if len(loops) < 2:
            continue
        keep = 1 if loop_extent(sch, loops[-1]) >= cpu.lanes else 2
        if keep == 2 and len(loops) > 2:
            sch.fuse(*loops[-2:])
        outer = loops[:-keep]
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        vectorize_inner(sch, block, cpu.lanes)
    return "separable resize"
