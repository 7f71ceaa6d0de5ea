"""Row-wise kernels: softmax, layer norm, and any kernel whose reductions run along the innermost
axis and whose other work is elementwise on the same rows (a transformer's attention and norms).

Each row is done whole by one thread while it is in L1: every block computed under the parallel
loop over rows, the elementwise ones vectorised, each reduction split into a vector of partial
results (``rfactor``: lanes accumulated side by side, then summed once). A value read by two
blocks (softmax's exponentials: summed, then divided) is computed once and kept for the row,
not recomputed inside each reader (the plain inlining computed every exp twice, scalar, inside
the sum: MobileViT-XXS's two 4x4x256x256 softmaxes took 7.3 ms of its 21).
"""

from __future__ import annotations

from tvm.s_tir import Schedule

from mobilec.schedules.loops import ERRORS, CpuParams, auto_inline, child_blocks, is_reduction, loop_extent


def is_rowwise(sch: Schedule, blocks: list) -> bool:
    """``blocks``: the kernel's reductions. Each reduces one axis, the innermost index of what it
    reads."""
    last = child_blocks(sch)[-1]
    if not blocks or len(sch.get_loops(last)) < 2:  # no axis of rows to run in parallel
        return False
    for block in blocks:
        b = sch.get(block)
        reduce = [iv for iv in b.iter_vars if int(iv.iter_type) == 2]
        if len(reduce) != 1 or not any(len(r.region) and r.region[-1].min.same_as(reduce[0].var) for r in b.reads):
            return False
    return True


def schedule(sch: Schedule, cpu: CpuParams) -> str:
    auto_inline(sch, set(), single_use=True)
    out = sch.get(child_blocks(sch)[-1]).writes[0].source
    cpu = cpu.for_channels(int(out.shape[-1]))  # AVX-512's 16 lanes where they divide a row
    partials = set()
    for block in child_blocks(sch):
        inner = sch.get_loops(block)[-1]
        if is_reduction(sch, block) and _whole_vectors(sch, inner, cpu):
            _, lanes = sch.split(inner, [None, cpu.lanes])
            # the lanes' partial results side by side, summed once
            partials.add(sch.get(sch.rfactor(lanes, factor_axis=0)).name_hint)
    blocks = child_blocks(sch)
    rows = sch.get_loops(blocks[-1])[:-1]
    if not rows:
        raise ValueError("a row-wise kernel needs an axis of rows")
    par = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    sch.parallel(par)
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, par, preserve_unit_loops=True)
    for block in child_blocks(sch, par):
        if sch.get(block).name_hint in partials:
            loops = sch.get_loops(block)
            below = loops[next(i for i, l in enumerate(loops) if sch.get(l).same_as(sch.get(par))) + 1:]
            sch.reorder(below[-1], below[0])  # its lanes (the first axis) innermost
        inner = sch.get_loops(block)[-1]
        if not _whole_vectors(sch, inner, cpu) and loop_extent(sch, inner) != cpu.lanes:
            continue
        if loop_extent(sch, inner) > cpu.lanes:
            inner = sch.split(inner, [None, cpu.lanes])[1]
        try:
            sch.vectorize(inner)
        except ERRORS:  # the loop drives a reduction axis (a partial results' sum): it stays scalar
            pass
    return "rowwise"


def _whole_vectors(sch: Schedule, loop, cpu: CpuParams) -> bool:
    extent = loop_extent(sch, loop)
    return extent >= 2 * cpu.lanes and extent % cpu.lanes == 0
