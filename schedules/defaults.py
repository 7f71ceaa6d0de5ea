"""Default schedules: fast kernels on the first compile, before (and without) any tuning.

Every kernel a MobileNet is made of is a reduction block with an elementwise epilogue, so one
register-tiled loop nest covers them all; what differs per kernel is which output axis is
vectorised ("cols", contiguous in memory), which is unrolled across registers ("rows"), and where
the padded input comes from. The pipeline runs the network in NHWC (channels innermost), where
every kernel vectorises over channels at any map size:

  kernel (NHWC)     rows x cols (vector)          reduction     padding
  pointwise         a block of pixels x out ch.   in channels   -      (weights packed [F/v, K, v])
  depthwise kxk     pixels of a row x channels    ky, kx        a row/column condition per tap
  stem / any conv   pixels of a row x out ch.     ky, kx, ci    a row/column condition per tap
  classifier        batch x out features          in features   -
  SE, pools, rest   pools: pixels outside, a vector of channels; elementwise: fused, vectorised

The imported NCHW layout (``layout="NCHW"``, for comparison) keeps the earlier kernels:

  pointwise, big    out channels x pixels         in channels   -
  pointwise, small  pixels x out channels (IHWO)  in channels   -
  depthwise kxk     output rows x output row      ky, kx        per channel, in cache
  stem / any conv   out channels x output row     ci, ky, kx    whole input, once
  (stride 2: the staged input is stored with even and odd columns apart, so taps load contiguously)

Tile sizes come from the target: lanes per vector register, register count and core count
(``CpuParams``). A kernel the tuning database has a record for keeps the tuned schedule; these
apply only where it has none.

Each schedule is also a MetaSchedule template: every register-tile size that divides its loop is
a ``sample_perfect_tile`` whose decision is the heuristic's, so the default schedule's trace is a
point of a search space the evolutionary search can mutate, and ``search_space`` is that space
(the same function, tile sizes left to MetaSchedule's sampler) for ``mobilec tune``.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from typing import Optional

import tvm
from tvm.s_tir import Schedule

from mobilec.schedules import integer
from mobilec.schedules.tile_cost import LATENCY, best_tile, divisors as _divisors

log = logging.getLogger("mobilec.schedules")

_ERRORS = (tvm.s_tir.ScheduleError, RuntimeError, ValueError, AssertionError, IndexError)
SCHEDULED = "tirx.is_scheduled"  # the attribute MetaSchedule's database application also sets
DEFAULT = "mobilec.default_schedule"  # which default schedule a kernel got (for reports and tests)


@dataclass(frozen=True)
class CpuParams:
    lanes: int       # fp32 lanes in one vector register
    registers: int   # vector registers
    cores: int
    int_dot: str = ""  # the integer dot-product instruction (schedules/integer.py; "": none)

    @classmethod
    def from_target(cls, target: tvm.target.Target) -> "CpuParams":
        """From the CPU preset the target was made from (``compiler/targets.py``: vector width and
        register count per preset); a target no preset made gets 128-bit vectors, 16 registers."""
        from mobilec.compiler.targets import preset_of  # here: the compiler package imports this module

        preset = preset_of(target)
        cores = int(target.attrs.get("num-cores", 1))
        if preset is None:
            return cls(4, 16, cores)
        return cls(preset.vector_bits // 32, preset.vector_registers, cores, preset.int_dot)


# ---------------------------------------------------------------------------------------------
# block analysis

def _is_reduction(sch: Schedule, block) -> bool:
    return any(int(iv.iter_type) == 2 for iv in sch.get(block).iter_vars)


def _auto_inline(sch: Schedule, keep: set[str]) -> None:
    """Inline every elementwise block into its consumer (or producer), so a kernel becomes its
    reduction blocks plus at most one epilogue each. Repeats until nothing changes."""
    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            name = sch.get(block).name_hint
            if name in keep or _is_reduction(sch, block):
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(block)
                except _ERRORS:
                    continue
                changed = True
                break


def _extent(sch: Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _split(sch: Schedule, loop, inner: int, most: int):
    """(outer, inner) loops with ``inner`` iterations inside. A tile that divides the loop is a
    MetaSchedule tile-size sample (``sample_perfect_tile``) whose decision is the heuristic's, so
    the default schedule is a trace the search can mutate; in the search space (``search_space``)
    the size is sampled, up to ``most`` (or the heuristic's, if larger). A tile with a tail, and
    an axis the heuristic leaves untiled, is a fixed split (sampling those too let the search
    unroll tiles of tens of thousands of instructions, which LLVM takes minutes to compile)."""
    extent = _extent(sch, loop)
    inner = min(inner, extent)
    if extent % inner or inner == 1:  # an axis the heuristic does not tile stays untiled: the
        return sch.split(loop, [None, inner])  # register tile is unrolled, a product of every axis
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(inner, most),
                                      decision=None if _SEARCHING.get() else [extent // inner, inner])
    return sch.split(loop, factors)


# inside ``search_space``: tile sizes are sampled by MetaSchedule instead of decided here
_SEARCHING: contextvars.ContextVar[bool] = contextvars.ContextVar("mobilec_searching", default=False)


def _divisor_tile(extent: int, lanes: int, max_vectors: int) -> int:
    """The vector tile for an axis: the largest multiple of ``lanes`` (up to ``max_vectors``
    vectors) dividing ``extent``; the whole axis when it is short; else one vector (tail split)."""
    for v in range(max_vectors, 0, -1):
        if extent % (lanes * v) == 0:
            return lanes * v
    if extent <= lanes * max_vectors:
        return extent
    return lanes


def _row_tile(extent: int, most: int) -> int:
    """The largest divisor of ``extent`` not above ``most`` (at least 1)."""
    return max(_divisors(extent, max(1, most)))


def _vectorize_inner(sch: Schedule, block, lanes: int) -> None:
    """Vectorise the innermost loop in pieces of whole registers that divide it (a predicated
    tail would keep TVM from vectorising at all); a short odd loop is vectorised whole."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    extent = _extent(sch, inner)
    if extent > 4 * lanes:
        piece = next((v * lanes for v in (4, 2, 1) if extent % (v * lanes) == 0), None)
        if piece is None:
            return  # long and odd (e.g. 49 x 49 planes): LLVM's loop vectoriser does better
        inner = sch.split(inner, [None, piece])[1]
    sch.vectorize(inner)


# ---------------------------------------------------------------------------------------------
# the register-tiled reduction

def _tile(sch: Schedule, block, tiles: list[int], cpu: CpuParams, epilogue=None, pad=None,
          pad_at_channel: bool = False, outer_order: Optional[list[int]] = None, parallel: bool = True,
          unroll_reduction: bool = False, parallel_all: bool = False, most: Optional[list[int]] = None) -> None:
    """``tiles``: one register-tile size per spatial loop of ``block`` (in loop order; 1 = not
    tiled); the last spatial loop is the vectorised one. ``most``: per spatial loop, the largest
    tile the search may sample (default: 4 vectors on the vector loop, ``MAX_ROW_TILE`` on the
    others). Result: parallel(leading tile loops) / reduction loops / register tile (unrolled,
    the last loop vectorised), so the accumulator tile stays in registers and the epilogue is
    applied per tile: a conv's output is written once, finished. ``outer_order`` permutes the
    tile loops (default: the spatial loops' order)."""
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    loops = sch.get_loops(block)
    spatial = [l for l, k in zip(loops, kinds) if k == 0]
    reduce = [l for l, k in zip(loops, kinds) if k != 0]
    outer, inner = [], []
    for n, (loop, tile) in enumerate(zip(spatial, tiles)):
        vector = n == len(tiles) - 1
        o, i = _split(sch, loop, tile, most[n] if most else 4 * cpu.lanes if vector else MAX_ROW_TILE)
        outer.append(o)
        inner.append(i)
    if outer_order:
        outer = [outer[i] for i in outer_order]
    sch.reorder(*outer, *reduce, *inner)
    # parallel over the leading tile loops; for depthwise only over channels, so each thread
    # stages whole padded planes
    lead = (outer if parallel_all else  # all tile loops, unit ones too (they sit between the others)
            [l for l in outer[:(2 if pad_at_channel else -1)] if _extent(sch, l) > 1]
            or [l for l in outer if _extent(sch, l) > 1][-1:] or outer[:1])  # a GEMV: its one loop
    anchor = outer[-1]
    fused_anchor = any(l.same_as(anchor) for l in lead)
    par = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    if fused_anchor:
        anchor = par
    if parallel:
        sch.parallel(par)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, anchor, preserve_unit_loops=True)
        _vectorize_inner(sch, epilogue, cpu.lanes)
    if pad is not None:
        if pad_at_channel:  # depthwise: one channel's padded plane, staged while it is in cache
            sch.compute_at(pad, par, preserve_unit_loops=True)
        _stage_padding(sch, pad, par if pad_at_channel else None, cpu)  # last: it leaves two writers
    last = _extent(sch, inner[-1])
    if last > cpu.lanes and last % cpu.lanes == 0:  # whole registers, unrolled: LLVM handles any count
        vectors, inner[-1] = sch.split(inner[-1], [None, cpu.lanes])
        inner.insert(-1, vectors)
    for loop in inner[:-1]:
        if _extent(sch, loop) > 1:
            sch.unroll(loop)
    if pad_at_channel or unroll_reduction:  # unrolled taps: each tap's weight loaded once per tile
        for loop in reduce:
            if _extent(sch, loop) > 1:
                sch.unroll(loop)
    sch.vectorize(inner[-1])
    if reduce:  # last: the init copies the unrolled, vectorised tile loops
        sch.decompose_reduction(block, reduce[0])


def _stage_padding(sch: Schedule, pad, under, cpu: CpuParams) -> None:
    """The zero border and the interior copy as separate branch-free loops (inside ``under``, the
    loop the padding was computed at, if any), the copy vectorised."""
    loops = sch.get_loops(pad)
    depth = 0
    if under is not None:
        below = [i for i, l in enumerate(loops) if l.same_as(under)]
        depth = below[0] + 1 if below else 0
        loops = loops[depth:]
    try:
        fill = sch.decompose_padding(pad, loops[0])
    except _ERRORS:
        return
    _vectorize_inner(sch, pad, cpu.lanes)
    _vectorize_inner(sch, fill, cpu.lanes)
    if depth:  # the fill lands outside ``under``, in copies of the loops above: parallel too
        sch.parallel(sch.get_loops(fill)[depth - 1])


# ---------------------------------------------------------------------------------------------
# kernel kinds: each returns a short description of the tiling it chose

def _row_tile_for(extent: int, vectors: int, cpu: CpuParams) -> int:
    return _row_tile(extent, max(1, (cpu.registers - 4) // vectors))


MAX_ROW_TILE = 16  # the search's largest register tile along a non-vector axis
DEPTHWISE_ACCUMULATORS = 8  # measured (AVX2, Large): 1 -> 4 -> 8 took its depthwise kernels 0.90 -> 0.82 -> 0.75 ms


def _pointwise_tiles(f: int, y: int, x: int, k: int, cpu: CpuParams, ihwo: bool):
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
        for ytile in _divisors(y, 4):
            for rows in _divisors(f, budget):
                acc = rows * vectors * ytile
                if acc > budget:
                    continue
                score = rows * cols * ytile / (max(acc, vectors * ytile + rows, LATENCY) + acc / k)
                out.append((score, "nchw", [1, rows, ytile, cols], f"{rows} channels x {ytile}x{cols} pixels"))
    if ihwo:
        for vectors in (1,):  # measured: 14 pixels x 1 vector beats 7 x 2 by a third (AVX2, 14x14)
            if f % (vectors * cpu.lanes):
                continue
            for rows in _divisors(x, budget // vectors):
                lanes = rows * vectors * cpu.lanes
                score = lanes / (max(rows * vectors, vectors + rows, LATENCY) + lanes / k)
                out.append((score, "nhwc", [1, 1, rows, vectors * cpu.lanes],
                            f"{rows} pixels x {vectors * cpu.lanes} channels"))
    if not out:  # no power-of-two vector divides either axis: the whole row (LLVM splits it)
        cols = x if x <= 4 * cpu.lanes else cpu.lanes
        rows = _row_tile(f, max(1, budget // -(-cols // cpu.lanes)))
        out.append((0.0, "nchw", [1, rows, 1, cols], f"{rows} channels x 1x{cols} pixels"))
    return max(out, key=lambda c: (c[0], c[2][-1]))


def _pointwise(sch: Schedule, block, epilogue, cpu: CpuParams, ihwo: bool) -> str:
    """1x1 conv as a GEMM, out[f, y, x] = sum_c W[c, f] * in[c, y, x]: either output channels
    across registers and pixels of a row vectorised, or (on maps too narrow to vectorise, 14x14
    and 7x7) pixels across registers and output channels vectorised, the weights IHWO so a vector
    of channels is one contiguous load."""
    n, f, y, x, k = (_extent(sch, l) for l in sch.get_loops(block)[:5])
    _, orientation, tiles, what = _pointwise_tiles(f, y, x, k, cpu, ihwo)
    if orientation == "nhwc":
        sch.reorder(*[sch.get_loops(block)[i] for i in (0, 2, 3, 1)])  # n, y, x, f
        # the accumulator channels-last too, so a vector of channels is one register
        sch.transform_layout(block, ("write", 0), lambda n_, c, h, w: (n_, h, w, c))
    # channels-vectorised: one block of weights (k x vector) stays in L1 over all pixel tiles
    _tile(sch, block, tiles, cpu, epilogue, outer_order=[0, 3, 1, 2] if orientation == "nhwc" else None)
    return f"pointwise {what}"


def _direct(sch: Schedule, block, epilogue, pad, cpu: CpuParams, depthwise: bool) -> str:
    """kxk conv (depthwise or full): output rows vectorised, output channels across registers."""
    n, f, y, x = (_extent(sch, l) for l in sch.get_loops(block)[:4])
    # power-of-two vectors dividing the row; else the whole (short) row, which LLVM splits
    col = next((c for c in (2 * cpu.lanes, cpu.lanes, cpu.lanes // 2) if x % c == 0),
               x if x <= 2 * cpu.lanes else cpu.lanes)
    vectors = -(-col // cpu.lanes)
    rows = 1 if depthwise else _row_tile(f, max(1, min(4, (cpu.registers - 4) // vectors)))
    padded = _extent(sch, sch.get_loops(pad)[3]) if pad is not None else 0
    if padded >= 2 * x + 1 and padded % 2 == 0:
        # stride 2: even and odd padded columns stored apart (the staging copy walks that layout),
        # so a row of taps is one contiguous load instead of a gather of every other element
        deinterleave = lambda n_, c, h, w: (n_, c, h, w % 2, w // 2)  # noqa: E731
        sch.transform_layout(pad, ("write", 0), deinterleave)
        sch.transform_block_layout(pad, deinterleave)
    # independent accumulators to hide FMA latency: more output rows per tile (their taps share
    # input rows, which LLVM loads once)
    ytile = _row_tile(y, max(1, DEPTHWISE_ACCUMULATORS // (vectors * rows)))
    _tile(sch, block, [1, rows, ytile, col], cpu, epilogue, pad, pad_at_channel=depthwise)
    what = f"{ytile} rows x {col} columns" if depthwise else f"{rows} channels x {ytile}x{col} columns"
    return f"{'depthwise' if depthwise else 'direct'} {what}"


def _pointwise_nhwc_tiles(y: int, x: int, f: int, k: int, cpu: CpuParams,
                          vectors: Optional[int] = None) -> tuple[float, int, int, int]:
    """(score, rows, pixels, vectors) of the register tile of an NHWC 1x1 conv: ``rows`` x
    ``pixels`` of the map across registers (one broadcast input value each), output channels
    vectorised (one weight load per vector), scored like ``_pointwise_tiles`` plus the broadcasts'
    share of the vector pipes (``tile_cost``): a 2x2-pixel x 2-vector tile beats a row of 14
    pixels x 1 vector by 1.3x (AVX2, 14x14x112->672). Accumulators, weight vectors and the
    broadcast must fit the register file (one spilled accumulator measured 1.8x slower).
    ``vectors``: fixed by packed weights. (0.0, 1, 1, 0) when no whole vector of channels
    divides ``f``."""
    best = best_tile(y, x, [v for v in ([vectors] if vectors else [1, 2, 3, 4]) if f % (v * cpu.lanes) == 0],
                     lambda v: cpu.registers - 1 - v, k=k)
    if best is None:
        return 0.0, 1, 1, 0
    score, rows, pixels, v = best
    return score * cpu.lanes, rows, pixels, v


@dataclass(frozen=True)
class WeightPacking:
    """One weight of a kernel stored packed: the block that reads it, which of its reads, the
    kernel parameter it is, and the output features per contiguous block (the schedule's vector
    tile). The layout moves the output-feature axis, last in HWIO and [K, N] weights, outside:
    [.., K, N] -> [N/block, .., K, block]."""
    block: str
    read: int
    param: int
    features: int
    group: int = 0  # an integer kernel's weights: input channels in groups of this (schedules/integer.py)

    def index_map(self, ndim: int) -> tvm.tirx.IndexMap:
        if self.group:
            return integer.grouped_layout(ndim, self.features, self.group)
        b = self.features
        return tvm.tirx.IndexMap.from_func(lambda *ax: (ax[-1] // b, *ax[:-1], ax[-1] % b), ndim=ndim)


def weight_packing(func: tvm.tirx.PrimFunc, cpu: CpuParams) -> list[WeightPacking]:
    """Which weights of a kernel to store packed, so each tile of its default schedule streams its
    weights from one contiguous run instead of K rows of the weight matrix (measured cold, as
    weights are inside a network: pointwise 0.25 -> 0.17-0.21 ms, the classifier's 1280x1000 GEMV
    0.36 -> 0.28 ms, SE at 7x7x960 0.18 -> 0.10 ms). Covered: NHWC pointwise convs, matmuls
    (classifiers) and NHWC SE's FCs; [] for any other kernel, and for weights that are not a
    parameter or whose tile does not divide the features."""
    sch = Schedule(tvm.IRModule({"main": func}))
    reductions = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if _is_reduction(sch, b)]
    names = [sch.get(b).name_hint for b in reductions]
    plans = []

    def plan(block, read: int, features: int, tile: int, group: int = 0) -> None:
        weight = sch.get(block).reads[read].source
        params = [i for i, v in enumerate(func.params) if v.same_as(weight)]
        if params and tile and features % tile == 0:
            plans.append(WeightPacking(sch.get(block).name_hint, read, params[0], tile, group))

    if len(reductions) == 1 and integer.takes_dot(sch, reductions[0], cpu) and (
            names[0].startswith("matmul") or _pointwise_1x1(sch, reductions[0])):
        block, dot = reductions[0], integer.instruction(cpu.int_dot)
        plan(block, 1, int(sch.get(block).writes[0].source.shape[-1]), dot.lanes, dot.group)
    elif len(reductions) == 1 and names[0] == "conv2d_nhwc":  # pointwise
        conv = reductions[0]
        loops = sch.get_loops(conv)
        if (len(loops) == 7 and len(sch.get(conv).reads[1].source.shape) == 4
                and [_extent(sch, l) for l in loops[4:6]] == [1, 1] and _unit_stride(sch, conv)):
            y, x, f, k = (_extent(sch, loops[i]) for i in (1, 2, 3, 6))
            plan(conv, 1, f, _pointwise_nhwc_tiles(y, x, f, k, cpu)[3] * cpu.lanes)
    elif _find(sch, "resize_columns") is not None:
        how = _separable_resize(sch, cpu)
    elif len(reductions) == 1 and names[0].startswith("matmul"):  # the classifier
        block = reductions[0]
        if len(sch.get(block).reads[1].source.shape) == 2:
            n = int(sch.get(block).writes[0].source.shape[-1])
            plan(block, 1, n, _matmul_columns(n, cpu))
    else:
        for block in reductions:
            if _is_se_fc(sch, block) and _nhwc(sch.get(block).name_hint):
                f = int(sch.get(block).writes[0].source.shape[3])
                read = next(i for i, r in enumerate(sch.get(block).reads)
                            if len(r.source.shape) == 4 and int(r.source.shape[3]) == f
                            and [int(d) for d in r.source.shape[:2]] == [1, 1])
                plan(block, read, f, _se_columns(f, cpu))
    return plans


def _pointwise_nhwc(sch: Schedule, block, epilogue, cpu: CpuParams) -> str:
    """NHWC 1x1 conv, out[y, x, f] = sum_c in[y, x, c] * W[c, f]: a block of rows x pixels across
    registers (2-D tiles: a tile over the fused pixel index costs a div/mod per tile, measured 2x
    on 112x112), output channels vectorised and stored contiguously, the weights of a channel
    tile packed contiguously by ``pack_kernel_weights``. Every tile is a parallel task; the
    larger of weights and map is walked once, in the outer loop."""
    loops = sch.get_loops(block)  # n, y, x, f, ry, rx, rc
    n, y, x, f = (_extent(sch, l) for l in loops[:4])
    k = _extent(sch, loops[6])
    weight = [int(d) for d in sch.get(block).reads[1].source.shape]
    packed = weight[-1] // cpu.lanes if len(weight) == 5 else None
    _, rows, pixels, vectors = _pointwise_nhwc_tiles(y, x, f, k, cpu, packed)
    cols = vectors * cpu.lanes if vectors else (f if f <= 4 * cpu.lanes else cpu.lanes)
    # the bigger operand streams through once: the weights (channel tiles outside) or the map
    # (pixel tiles outside, each writing whole lines of output)
    order = [0, 3, 1, 2] if f >= y * x else [0, 1, 2, 3]  # weights k*f against map y*x*k
    # searched: rows up to the heuristic's (a block of rows x 16 pixels x 4 vectors unrolls into
    # more code than LLVM compiles in a tuning trial's time), pixels and vectors as wide as before
    _tile(sch, block, [1, rows, pixels, cols], cpu, epilogue, outer_order=order, parallel_all=True,
          most=[1, rows, MAX_ROW_TILE, 4 * cpu.lanes])
    return f"pointwise {rows}x{pixels} pixels x {cols} channels (NHWC{', packed' if packed else ''})"


def _direct_nhwc(sch: Schedule, block, epilogue, pad, cpu: CpuParams, depthwise: bool) -> str:
    """NHWC kxk conv (depthwise or full): output channels vectorised (contiguous in the input,
    the HWIO weights and the output at any map size, any stride), pixels of an output row across
    registers; the taps unrolled so each tap's weight vector is loaded once per tile. The zero
    border is a condition on the row and column only (uniform across the vector)."""
    loops = sch.get_loops(block)  # n, y, x, f, ry, rx, rc
    n, y, x, f = (_extent(sch, l) for l in loops[:4])
    vectors = next((v for v in (2, 1) if f % (v * cpu.lanes) == 0), 0)
    cols = vectors * cpu.lanes if vectors else (f if f <= 2 * cpu.lanes else cpu.lanes)
    budget = max(1, (DEPTHWISE_ACCUMULATORS if depthwise else cpu.registers - 4) // max(1, vectors))
    rows = _row_tile(x, budget)
    if pad is not None:
        sch.compute_inline(pad)
    _tile(sch, block, [1, 1, rows, cols], cpu, epilogue, outer_order=[0, 1, 3, 2], unroll_reduction=True)
    return f"{'depthwise' if depthwise else 'direct'} {rows} pixels x {cols} channels (NHWC)"


def _matmul_columns(n: int, cpu: CpuParams) -> int:
    return _divisor_tile(n, cpu.lanes, 5)  # 5: 1000 classes = 25 x 40


def _se_columns(f: int, cpu: CpuParams) -> int:
    return _divisor_tile(f, cpu.lanes, 2)


def _matmul(sch: Schedule, block, epilogue, cpu: CpuParams) -> str:
    """Classifier: out[i, j] = sum_k x[i, k] * W[k, j], j contiguous."""
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    extents = [_extent(sch, l) for l, k in zip(sch.get_loops(block), kinds) if k == 0]
    col = _matmul_columns(extents[-1], cpu)
    rows = _row_tile_for(extents[-2], -(-col // cpu.lanes), cpu) if len(extents) > 1 else 1
    _tile(sch, block, [1] * (len(extents) - 2) + [rows, col][-len(extents):], cpu, epilogue)
    return f"matmul {rows} rows x {col} columns"


def _separable_resize(sch: Schedule, cpu: CpuParams) -> str:
    """``compiler/resize.py``'s two passes, each kept as its own loop nest (inlining the first
    into the second would bring back four gathers per output): per pass, every loop but the
    contiguous innermost parallel, the innermost (fused with the one above when it is shorter
    than a vector, e.g. NHWC channels) vectorised."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    _auto_inline(sch, {n for n in (sch.get(b).name_hint for b in blocks) if n.startswith("resize_")})
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(block)
        if len(loops) < 2:
            continue
        keep = 1 if _extent(sch, loops[-1]) >= cpu.lanes else 2
        if keep == 2 and len(loops) > 2:
            sch.fuse(*loops[-2:])
        outer = loops[:-keep]
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        _vectorize_inner(sch, block, cpu.lanes)
    return "separable resize"


def _se_fc(sch: Schedule, block, cpu: CpuParams) -> None:
    """SE's 1x1 convs on a pooled [1, C, 1, 1] vector: output channels vectorised (IHWO weights),
    the input channel loop outside."""
    loops = sch.get_loops(block)
    if _nhwc(sch.get(block).name_hint):  # already n, y, x, f / ry, rx, rc
        f, k = _extent(sch, loops[3]), _extent(sch, loops[6])
    else:
        sch.reorder(loops[0], loops[2], loops[3], loops[1])
        f, k = _extent(sch, loops[1]), _extent(sch, loops[4])
    # a small FC is not worth a fork-join; a big one streams its weights on every core
    _tile(sch, block, [1, 1, 1, _se_columns(f, cpu)], cpu, parallel=f * k >= 1 << 15)


def _generic(sch: Schedule, cpu: CpuParams, done: set[str] = frozenset()) -> None:
    """Everything else (SE's pool and gating; pools; reshapes): each block's spatial loops
    fused and parallel, the innermost contiguous loop vectorised where it is spatial."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint in done:
            continue
        loops = sch.get_loops(block)
        kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
        if len(loops) != len(kinds):
            continue
        spatial = [l for l, k in zip(loops, kinds) if k == 0]
        if not spatial or len(spatial) != kinds.count(0):
            continue
        if 2 not in kinds and len(spatial) >= 3 and _extent(sch, spatial[-1]) * _extent(sch, spatial[-2]) >= cpu.lanes:
            # per channel plane: what varies by channel (SE's gate) is one broadcast, not a gather
            outer = sch.fuse(*spatial[:-2]) if len(spatial) > 3 else spatial[0]
            sch.fuse(*spatial[-2:])  # the plane: contiguous, vectorised
            if _extent(sch, outer) >= 2 * cpu.cores:
                sch.parallel(outer)
            _vectorize_inner(sch, block, cpu.lanes)
        elif 2 not in kinds:
            fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
            tile = cpu.lanes * 4
            if _extent(sch, fused) > tile * 4:
                outer, inner = sch.split(fused, [None, tile])
                sch.parallel(outer)
                sch.vectorize(inner)
            elif _extent(sch, fused) >= cpu.lanes:
                sch.vectorize(fused)
        elif kinds[: len(spatial)] == [0] * len(spatial) and _channels_last_reduction(sch, block, cpu):
            # a pool over NHWC pixels: the pixel loops outside, a vector of channels accumulated
            reduce = loops[len(spatial):]
            sch.reorder(*reduce, spatial[-1])
            _vectorize_inner(sch, block, cpu.lanes)
            sch.decompose_reduction(block, reduce[0])  # the init copies the vectorised loop
        elif kinds[: len(spatial)] == [0] * len(spatial):
            busy = [l for l in spatial if _extent(sch, l) > 1]
            if busy:
                fused = sch.fuse(*busy) if len(busy) > 1 else busy[0]
                if _extent(sch, fused) >= 2 * cpu.cores:
                    sch.parallel(fused)


def _nhwc(block_name: str) -> bool:
    """Whether a conv block is TOPI's NHWC one ("conv2d_nhwc", "group_conv2d_nhwc1", ...)."""
    return block_name.rstrip("0123456789").endswith("_nhwc")


def _channels_last_reduction(sch: Schedule, block, cpu: CpuParams) -> bool:
    """A reduction whose only spatial axis of more than one element is the innermost index of
    what it reads (a global pool of an NHWC map): worth vectorising over that axis."""
    b = sch.get(block)
    spatial = [iv for iv in b.iter_vars if int(iv.iter_type) == 0]
    busy = [iv for iv in spatial if int(iv.dom.extent) > 1]
    if len(busy) != 1 or not busy[0].same_as(spatial[-1]) or int(busy[0].dom.extent) % cpu.lanes:
        return False
    last = b.reads[0].region[-1].min if b.reads else None
    return last is not None and last.same_as(busy[0].var)


def _find(sch: Schedule, prefix: str):
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint.startswith(prefix):
            return block
    return None


def _epilogue(sch: Schedule, block):
    """The one block finishing ``block``'s output. A kernel that writes the function's output
    straight from the reduction gets a copy-out stage instead, so the accumulator is always an
    intermediate whose layout the schedule may choose."""
    consumers = sch.get_consumers(block)
    if len(consumers) == 1:
        return consumers[0]
    return sch.cache_write(block, 0, "global") if not consumers else None


def schedule_kernel(func: tvm.tirx.PrimFunc, cpu: CpuParams) -> tuple[tvm.tirx.PrimFunc, str]:
    """The default schedule of one kernel: (scheduled function, what was chosen)."""
    sch, how = default_schedule(tvm.IRModule({"main": func}), cpu)
    return sch.mod["main"].with_attr(SCHEDULED, True).with_attr(DEFAULT, how), how


def default_schedule(mod: tvm.IRModule, cpu: CpuParams) -> tuple[Schedule, str]:
    """The default schedule of the kernel ``mod["main"]`` as a Schedule, whose trace MetaSchedule
    can store, replay and mutate (how tuning is seeded with it)."""
    sch = Schedule(mod)
    return sch, _schedule(sch, cpu)


def search_space(sch: Schedule, cpu: CpuParams) -> Schedule:
    """The same schedule as a MetaSchedule design space (``ScheduleFn``): the same loop structure,
    with every tile size sampled instead of decided. One code path for "default" and "searched"."""
    token = _SEARCHING.set(True)
    try:
        _schedule(sch, cpu)
    finally:
        _SEARCHING.reset(token)
    return sch


def decisions(trace) -> list:
    """A trace's sampling decisions in instruction order (what tells a seeded default schedule,
    whose decisions are the heuristic's, from the search's candidates)."""
    made = trace.decisions
    return [[int(d) for d in made[inst]] if isinstance(made[inst], (list, tvm.ir.Array)) else int(made[inst])
            for inst in trace.insts if inst in made]


def _schedule(sch: Schedule, cpu: CpuParams) -> str:
    reductions = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if _is_reduction(sch, b)]
    names = [sch.get(b).name_hint for b in reductions]
    single_conv = len(reductions) == 1 and (names[0].startswith("conv2d") or names[0].startswith("group_conv2d"))
    if single_conv:
        conv = reductions[0]
        weight = [int(d) for d in sch.get(conv).reads[1].source.shape]
        nhwc = _nhwc(names[0])  # then HWIO weights
        kernel_1x1 = ([_extent(sch, l) for l in sch.get_loops(conv)[4:6]] == [1, 1] if nhwc  # ry, rx
                      else weight[2:] == [1, 1] or weight[1:3] == [1, 1])
        depthwise = names[0].startswith("group_conv2d")
        pad = _find(sch, "pad_temp")
        keep = {sch.get(pad).name_hint} if pad is not None and not kernel_1x1 else set()
        _auto_inline(sch, keep)
        epilogue = _epilogue(sch, conv)
        pad = _find(sch, "pad_temp") if keep else None
        if nhwc and integer.packed_for(sch, conv, cpu):
            how = integer.schedule_dot(sch, conv, epilogue, cpu, _split)
        elif nhwc:
            how = (_pointwise_nhwc(sch, conv, epilogue, cpu) if kernel_1x1 and not depthwise and _unit_stride(sch, conv)
                   else _direct_nhwc(sch, conv, epilogue, pad, cpu, depthwise))
        elif kernel_1x1 and not depthwise and _unit_stride(sch, conv):
            how = _pointwise(sch, conv, epilogue, cpu, ihwo=weight[2:] != [1, 1])
        else:
            how = _direct(sch, conv, epilogue, pad, cpu, depthwise)
    elif _find(sch, "resize_columns") is not None:
        how = _separable_resize(sch, cpu)
    elif len(reductions) == 1 and names[0].startswith("matmul"):
        _auto_inline(sch, set())
        block = reductions[0]
        how = (integer.schedule_dot(sch, block, _epilogue(sch, block), cpu, _split)
               if integer.packed_for(sch, block, cpu) else _matmul(sch, block, _epilogue(sch, block), cpu))
    else:
        _auto_inline(sch, set())
        fcs = {sch.get(b).name_hint for b in reductions if _is_se_fc(sch, b)}
        for name in fcs:
            _se_fc(sch, sch.get_sblock(name), cpu)
        _generic(sch, cpu, fcs)
        how = "squeeze-excite" if fcs else "generic"
    return how


def _is_se_fc(sch: Schedule, block) -> bool:
    """A 1x1 conv on a 1x1 map with IHWO weights (what SE's FCs are after weight packing)."""
    b = sch.get(block)
    out = [int(d) for d in b.writes[0].source.shape]
    if _nhwc(b.name_hint):  # HWIO weights, read after FC1's inlined bias and ReLU
        weights = [[int(d) for d in r.source.shape] for r in b.reads]
        return (b.name_hint.startswith("conv2d") and out[1:3] == [1, 1]
                and any((len(w) == 4 and w[:2] == [1, 1] and w[3] == out[3])  # HWIO
                        or (len(w) == 5 and w[1:3] == [1, 1] and w[0] * w[4] == out[3])  # packed
                        for w in weights))
    weight = [int(d) for d in b.reads[-1].source.shape]
    return (b.name_hint.startswith("conv2d") and out[2:] == [1, 1] and len(weight) == 4
            and weight[1:3] == [1, 1] and len(sch.get_loops(block)) == 7)


def _pointwise_1x1(sch: Schedule, conv) -> bool:
    """An NHWC 1x1 convolution of stride 1 (n, y, x, f, ry, rx, rc) with 4-D HWIO weights."""
    loops = sch.get_loops(conv)
    return (sch.get(conv).name_hint == "conv2d_nhwc" and len(loops) == 7
            and len(sch.get(conv).reads[1].source.shape) == 4
            and [_extent(sch, l) for l in loops[4:6]] == [1, 1] and _unit_stride(sch, conv))


def _unit_stride(sch: Schedule, conv) -> bool:
    out = [int(d) for d in sch.get(conv).writes[0].source.shape]
    src = [int(d) for d in sch.get(conv).reads[0].source.shape]
    return out[1:3] == src[1:3] if _nhwc(sch.get(conv).name_hint) else out[2:] == src[2:]


def summarize(kernels: dict[str, str]) -> dict:
    """{kernel: how} -> {kind: count, ..., "unscheduled": [kernels left to plain lowering]}."""
    out: dict = {}
    for name, how in sorted(kernels.items()):
        if how == "none":
            out.setdefault("unscheduled", []).append(name)
        else:
            kind = how.split(" ")[0]
            out[kind] = out.get(kind, 0) + 1
    return out


def is_scheduled(func: tvm.tirx.PrimFunc) -> bool:
    """Whether a kernel already has a schedule (from the tuning database, or a default)."""
    return bool(func.attrs) and any(k in func.attrs for k in (SCHEDULED, "tir.is_scheduled"))


def apply_defaults(target: tvm.target.Target, report: Optional[dict] = None) -> tvm.transform.Pass:
    """Schedule every kernel not already scheduled (by the tuning database). A kernel whose
    default schedule fails is left to TVM's plain lowering and named in the log: slower, never
    wrong."""
    cpu = CpuParams.from_target(target)

    @tvm.transform.module_pass(opt_level=0, name="mobilec.DefaultSchedules")
    def run(mod, _ctx):
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            if is_scheduled(func):
                continue
            try:
                updates[gv], how = schedule_kernel(func, cpu)
            except _ERRORS as e:
                log.warning("no default schedule for %s (%s): left to plain lowering", gv.name_hint,
                            str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
                how = "none"
            if report is not None:
                report[gv.name_hint] = how
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return run
