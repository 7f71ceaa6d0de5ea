"""The loop nest every default schedule is made of, and the block analysis that picks one.

A MobileNet kernel is a reduction block with an elementwise epilogue. ``tile_reduction`` makes the
one loop nest they all share: parallel tile loops / reduction loops / a register tile unrolled
across registers with its innermost axis vectorised, the epilogue applied per tile. Every tile
size that divides its loop goes through ``split``: a MetaSchedule ``sample_perfect_tile`` whose
decision is the heuristic's (so a default schedule is a point of the search space), or, inside
``defaults.search_space``, left to MetaSchedule's sampler. The kernel kinds (``kernels/``) say
which axes are tiled, by how much and in what order; ``CpuParams`` (``mobilec/targets.py``) is what
they read of the CPU.
"""

from __future__ import annotations

import math
import contextvars
from typing import Optional

import tvm
from tvm.s_tir import Schedule

from mobilec.schedules.tile_cost import divisors
from mobilec.targets import CpuParams

ERRORS = (tvm.s_tir.ScheduleError, RuntimeError, ValueError, AssertionError, IndexError)


def is_reduction(sch: Schedule, block) -> bool:
    return any(int(iv.iter_type) == 2 for iv in sch.get(block).iter_vars)


def auto_inline(sch: Schedule, keep: set[str], single_use: bool = False) -> None:
    """Inline every elementwise block into its consumer (or producer), so a kernel becomes its
    reduction blocks plus at most one epilogue each. Repeats until nothing changes.
    ``single_use``: a block read by several others stays (computed once, not once per reader)."""
    changed = True
    while changed:
        changed = False
        for block in child_blocks(sch):
            name = sch.get(block).name_hint
            if name in keep or is_reduction(sch, block) or single_use and len(sch.get_consumers(block)) > 1:
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(block)
                except ERRORS:
                    continue
                changed = True
                break


def loop_extent(sch: Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def split(sch: Schedule, loop, inner: int, most: int):
    """(outer, inner) loops with ``inner`` iterations inside. A tile that divides the loop is a
    MetaSchedule tile-size sample (``sample_perfect_tile``) whose decision is the heuristic's, so
    the default schedule is a trace the search can mutate; in the search space (``defaults.search_space``)
    the size is sampled, up to ``most`` (or the heuristic's, if larger). A tile with a tail, and
    an axis the heuristic leaves untiled, is a fixed split (sampling those too let the search
    unroll tiles of tens of thousands of instructions, which LLVM takes minutes to compile)."""
    extent = loop_extent(sch, loop)
    inner = min(inner, extent)
    if extent % inner or inner == 1:  # an axis the heuristic does not tile stays untiled: the
        return sch.split(loop, [None, inner])  # register tile is unrolled, a product of every axis
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(inner, most),
                                      decision=None if SEARCHING.get() else [extent // inner, inner])
    return sch.split(loop, factors)


# inside ``defaults.search_space``: tile sizes are sampled by MetaSchedule instead of decided here
SEARCHING: contextvars.ContextVar[bool] = contextvars.ContextVar("mobilec_searching", default=False)
# inside one of ``defaults.search_space``'s design spaces: {"flip": take the other side of each
# yes/no choice, "seen": whether the schedule made one}
CHOICES: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("mobilec_choices", default=None)


def choose(heuristic: bool) -> bool:
    """A yes/no decision of a schedule that is not a tile size (such as which operand's tile loop
    is outermost): the heuristic's in the default schedule; in the search, MetaSchedule's traces
    cannot branch, so each side is a design space of its own (``defaults.search_space``)."""
    state = CHOICES.get()
    if state is None:
        return heuristic
    state["seen"] = True
    return heuristic != state["flip"]


def divisor_tile(extent: int, lanes: int, max_vectors: int) -> int:
    """The vector tile for an axis: the largest multiple of ``lanes`` (up to ``max_vectors``
    vectors) dividing ``extent``; the whole axis when it is short; else one vector (tail split)."""
    for v in range(max_vectors, 0, -1):
        if extent % (lanes * v) == 0:
            return lanes * v
    if extent <= lanes * max_vectors:
        return extent
    return lanes


def row_tile(extent: int, most: int) -> int:
    """The largest divisor of ``extent`` not above ``most`` (at least 1)."""
    return max(divisors(extent, max(1, most)))


def register_run(channels: int, cpu: CpuParams) -> int:
    """The longest run of channels that divides ``channels`` and fits one register (for a channel
    count no whole vector divides: 90 -> 15 on AVX-512, 6 on AVX2). A vectorised loop longer than
    a register that no register divides (20 lanes: 16 + 4) is one LLVM vector that LLVM does not
    keep in registers, and a lane predicate keeps TVM from vectorising at all: measured on 1x1
    convolutions, 3 GMAC/s against 30-45 for runs of at most a register, AVX2 and AVX-512 alike."""
    width = max(cpu.lanes, cpu.wide_lanes)
    return max(d for d in range(1, min(channels, width) + 1) if channels % d == 0)


def vectorize_inner(sch: Schedule, block, lanes: int) -> None:
    """Vectorise the innermost loop in pieces of whole registers that divide it (a predicated
    tail would keep TVM from vectorising at all); a short odd loop is vectorised whole."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    extent = loop_extent(sch, inner)
    if extent > 4 * lanes:
        piece = next((v * lanes for v in (4, 2, 1) if extent % (v * lanes) == 0), None)
        if piece is None:
            return  # long and odd (e.g. 49 x 49 planes): LLVM's loop vectoriser does better
        inner = sch.split(inner, [None, piece])[1]
    sch.vectorize(inner)


def tile_reduction(sch: Schedule, block, tiles: list[int], cpu: CpuParams, epilogue=None, pad=None,
          pad_at_channel: bool = False, outer_order: Optional[list[int]] = None, parallel: bool = True,
          unroll_reduction: bool = False, parallel_all: bool = False, most: Optional[list[int]] = None,
          lane_read: Optional[int] = None, serial_rows: Optional[tuple[int, int]] = None) -> list:
    """``tiles``: one register-tile size per spatial loop of ``block`` (in loop order; 1 = not
    tiled); the last spatial loop is the vectorised one. ``most``: per spatial loop, the largest
    tile the search may sample (default: 4 vectors on the vector loop, ``MAX_ROW_TILE`` on the
    others). Result: parallel(leading tile loops) / reduction loops / register tile (unrolled,
    the last loop vectorised), so the accumulator tile stays in registers and the epilogue is
    applied per tile: a conv's output is written once, finished. ``outer_order`` permutes the
    tile loops (default: the spatial loops' order). ``lane_read``: the read (by index) whose
    values the tile broadcasts, one per row of accumulators, along the last reduction loop: read
    instead a vector of ``lanes`` of them per reduction step into registers, for multiply-adds by
    vector element (NEON's ``fmla v, v, v.s[i]``: one load per ``lanes`` steps, not a broadcast load
    each). ``serial_rows``: (spatial loop, n): that loop's tile loop split into chunks of ``n``
    iterations, the chunks parallel, the ``n`` walked in order just outside the last tile loop.
    Returns the tile loops that stay serial, outermost first."""
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    loops = sch.get_loops(block)
    spatial = [l for l, k in zip(loops, kinds) if k == 0]
    reduce = [l for l, k in zip(loops, kinds) if k != 0]
    outer, inner = [], []
    for n, (loop, tile) in enumerate(zip(spatial, tiles)):
        vector = n == len(tiles) - 1
        o, i = split(sch, loop, tile, most[n] if most else 4 * cpu.lanes if vector else MAX_ROW_TILE)
        outer.append(o)
        inner.append(i)
    rows = None
    if serial_rows is not None:
        axis, n = serial_rows
        outer[axis], rows = sch.split(outer[axis], [None, n])
    if outer_order:
        outer = [outer[i] for i in outer_order]
    if rows is not None:
        outer.insert(len(outer) - 1, rows)
    sch.reorder(*outer, *reduce, *inner)
    if lane_read is not None and reduce and loop_extent(sch, reduce[-1]) % cpu.lanes == 0:
        steps, lane = sch.split(reduce[-1], [None, cpu.lanes])
        sch.reorder(lane, *inner)
        sch.unroll(lane)
        stage_lanes(sch, block, lane_read, steps)
        reduce[-1] = steps
    unrolled = reduce if pad_at_channel or unroll_reduction else []
    if unroll_reduction and math.prod(loop_extent(sch, l) for l in reduce) > MAX_UNROLLED_TAPS:
        unrolled = reduce[:-1]  # a full conv's input channels stay a loop: taps x channels unrolled
        #                         is thousands of tiles in one basic block, minutes of LLVM
    if reduce and len(unrolled) < len(reduce):
        reduce[-1:] = unroll_steps(sch, reduce[-1])
    # parallel over the leading tile loops; for depthwise only over channels, so each thread
    # stages whole padded planes
    lead = (outer if parallel_all else  # all tile loops, unit ones too (they sit between the others)
            [l for l in outer[:(2 if pad_at_channel else -1 - (rows is not None))] if loop_extent(sch, l) > 1]
            or [l for l in outer if loop_extent(sch, l) > 1][-1:] or outer[:1])  # a GEMV: its one loop
    anchor = outer[-1]
    fused_anchor = any(l.same_as(anchor) for l in lead)
    par = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    if fused_anchor:
        anchor = par
    if parallel:
        sch.parallel(par)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, anchor, preserve_unit_loops=True)
        vectorize_inner(sch, epilogue, cpu.lanes)
    if pad is not None:
        if pad_at_channel:  # depthwise: one channel's padded plane, staged while it is in cache
            sch.compute_at(pad, par, preserve_unit_loops=True)
        stage_padding(sch, pad, par if pad_at_channel else None, cpu)  # last: it leaves two writers
    last = loop_extent(sch, inner[-1])
    if last > cpu.lanes and last % cpu.lanes == 0:  # whole registers, unrolled: LLVM handles any count
        vectors, inner[-1] = sch.split(inner[-1], [None, cpu.lanes])
        inner.insert(-1, vectors)
    for loop in inner[:-1]:
        if loop_extent(sch, loop) > 1:
            sch.unroll(loop)
    for loop in unrolled:  # unrolled taps: each tap's weight loaded once per tile
        if loop_extent(sch, loop) > 1:
            sch.unroll(loop)
    sch.vectorize(inner[-1])
    if reduce:  # last: the init copies the unrolled, vectorised tile loops
        sch.decompose_reduction(block, reduce[0])
    return [l for l in (rows, anchor) if l is not None]


MAX_UNROLLED_TAPS = 64  # a reduction unrolled whole (taps x channels) up to this many steps of the tile

MAX_UNROLL = 8  # the search's largest unroll of a reduction loop (steps of the whole register tile)


def unroll_steps(sch: Schedule, loop) -> list:
    """The reduction loop as [steps, unrolled]: ``unrolled`` steps of the register tile written
    out one after another, a ``sample_perfect_tile`` of up to ``MAX_UNROLL`` (so MetaSchedule's
    tile-size mutator changes it). The heuristic's is 1, LLVM's own choice: on x86 one step of a
    register tile is 12-48 instructions, and the loop's own 3 are noise; on in-order cores
    (Cortex-A53/A55) the steps' loads and multiply-adds interleave only when unrolled, which is
    for the device to measure. MetaSchedule's ``unroll_explicit`` annotation is not used: it
    unrolls a loop only whole, and a whole reduction of a register tile is hundreds to thousands
    of steps."""
    extent = loop_extent(sch, loop)
    if extent == 1:
        return [loop]
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=MAX_UNROLL,
                                      decision=None if SEARCHING.get() else [extent, 1])
    steps, unrolled = sch.split(loop, factors)
    sch.unroll(unrolled)
    return [steps, unrolled]


def stage_lanes(sch: Schedule, block, read: int, steps) -> None:
    """What ``block``'s read ``read`` takes in one iteration of the loop ``steps``, staged in a local
    buffer there: its innermost axis one vector load, the rest unrolled, so each pixel of a register
    tile holds one vector of values that the multiply-adds read by lane."""
    staged = sch.cache_read(block, read, "local")
    sch.compute_at(staged, steps, preserve_unit_loops=True)
    depth = next(i for i, l in enumerate(sch.get_loops(staged)) if sch.get(l).same_as(sch.get(steps))) + 1
    *tile, inner = sch.get_loops(staged)[depth:]
    for loop in tile:
        if loop_extent(sch, loop) > 1:
            sch.unroll(loop)
    sch.vectorize(inner)


def stage_padding(sch: Schedule, pad, under, cpu: CpuParams) -> None:
    """The zero border and the interior copy as separate branch-free loops (inside ``under``, the
    loop the padding was computed at, if any), the copy vectorised. In a search space the copy
    keeps its border condition instead: TVM 0.27 cannot print ``decompose_padding``'s trace
    instruction (a TypeError) and MetaSchedule prints every design space; the default schedule,
    measured as the search's seed, keeps it, so a searched candidate still has to beat it."""
    if SEARCHING.get():
        vectorize_inner(sch, pad, cpu.lanes)
        return
    loops = sch.get_loops(pad)
    depth = 0
    if under is not None:
        below = [i for i, l in enumerate(loops) if l.same_as(under)]
        depth = below[0] + 1 if below else 0
        loops = loops[depth:]
    try:
        fill = sch.decompose_padding(pad, loops[0])
    except ERRORS:
        return
    vectorize_inner(sch, pad, cpu.lanes)
    vectorize_inner(sch, fill, cpu.lanes)
    if depth:  # the fill lands outside ``under``, in copies of the loops above: parallel too
        sch.parallel(sch.get_loops(fill)[depth - 1])


def row_tile_for(extent: int, vectors: int, cpu: CpuParams) -> int:
    return row_tile(extent, max(1, (cpu.registers - 4) // vectors))


MAX_ROW_TILE = 16  # the search's largest register tile along a non-vector axis


def is_nhwc(block_name: str) -> bool:
    """Whether a conv block is TOPI's NHWC one ("conv2d_nhwc", "group_conv2d_nhwc1", ...)."""
    return block_name.rstrip("0123456789").endswith("_nhwc")


def child_blocks(sch: Schedule, parent=None) -> list:
    """The blocks directly under ``parent`` (a loop; default: the root block), as
    ``sch.get_child_blocks`` finds them, but looked up by name: TVM 0.27 cannot print that
    primitive's trace instruction for a block (a TypeError), and MetaSchedule prints every design
    space it is given, so a search space holding it ended the tuning run."""
    from tvm import s_tir
    from tvm.tirx import stmt as S

    names: list[str] = []

    def walk(stmt) -> None:
        if isinstance(stmt, s_tir.SBlockRealize):
            names.append(stmt.block.name_hint)
        elif isinstance(stmt, S.SeqStmt):
            for s in stmt.seq:
                walk(s)
        elif isinstance(stmt, S.IfThenElse):
            walk(stmt.then_case)
            if stmt.else_case is not None:
                walk(stmt.else_case)
        elif hasattr(stmt, "body"):  # loops, attributes, allocations, bindings
            walk(stmt.body)

    walk(sch.get(parent if parent is not None else sch.get_sblock("root")).body)
    return [sch.get_sblock(name) for name in names]


def find_block(sch: Schedule, prefix: str):
    for block in child_blocks(sch):
        if sch.get(block).name_hint.startswith(prefix):
            return block
    return None


def epilogue_of(sch: Schedule, block):
    """The one block finishing ``block``'s output. A kernel that writes the function's output
    straight from the reduction gets a copy-out stage instead, so the accumulator is always an
    intermediate whose layout the schedule may choose."""
    consumers = sch.get_consumers(block)
    if len(consumers) == 1:
        return consumers[0]
    return sch.cache_write(block, 0, "global") if not consumers else None
