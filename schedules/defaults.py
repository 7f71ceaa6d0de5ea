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

Each kernel kind (``kinds.py``, the one classifier) is scheduled by one file under ``kernels/``
(its tile heuristic and its schedule); this file applies the kind's schedule and says which
weights to pack for it. Each schedule
is also a MetaSchedule template: every register-tile size that divides its loop is
a ``sample_perfect_tile`` whose decision is the heuristic's, so the default schedule's trace is a
point of a search space the evolutionary search can mutate, and ``search_space`` is that space
(the same function, tile sizes left to MetaSchedule's sampler) for ``mobilec tune``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import tvm
from tvm.s_tir import Schedule

from mobilec.schedules.kernels import direct, generic, integer, matmul, pointwise, resize, rowwise, squeeze_excite
from mobilec.schedules.kinds import Kernel, Kind, classify, reductions
from mobilec.schedules.loops import (CHOICES, ERRORS, SEARCHING, CpuParams, auto_inline, epilogue_of, find_block,
                                     is_nhwc, loop_extent)

__all__ = ["CpuParams", "DEFAULT", "SCHEDULED", "Scheduled", "WeightPacking", "apply_defaults", "decisions", "default_schedule",
           "is_scheduled", "LAYOUT_FREE", "pack_for_tiles", "schedule_kernel", "search_space", "summarize",
           "weight_packing"]

log = logging.getLogger("mobilec.schedules")

SCHEDULED = "tirx.is_scheduled"  # the attribute MetaSchedule's database application also sets
DEFAULT = "mobilec.default_schedule"  # which default schedule a kernel got (for reports and tests)


@dataclass(frozen=True)
class WeightPacking:
    """One weight of a kernel stored packed: the block that reads it, which of its reads, the
    kernel parameter it is, and the output features per contiguous block.

    A float kernel's weight (``group`` 0) is *layout-free*: its schedule lays it out for its own
    tiles (``pack_for_tiles``, TVM's RewriteLayout: [.., K, N] -> [N/tile, .., K, tile]), so a tuned
    schedule's channel tile gets its own packing; ``features`` is the default schedule's tile. An
    integer kernel's weight is packed for the CPU's dot-product instruction, whose layout no
    search changes (``index_map``)."""
    block: str
    read: int
    param: int
    features: int
    group: int = 0  # an integer kernel's weights: input channels in groups of this (schedules/kernels/integer.py)

    def index_map(self, ndim: int) -> tvm.tirx.IndexMap:
        return integer.grouped_layout(ndim, self.features, self.group)


def weight_packing(func: tvm.tirx.PrimFunc, cpu: CpuParams) -> list[WeightPacking]:
    """Which weights of a kernel to store packed, so each tile of its schedule streams its weights
    from one contiguous run instead of K rows of the weight matrix (measured cold, as
    weights are inside a network: pointwise 0.25 -> 0.17-0.21 ms, the classifier's 1280x1000 GEMV
    0.36 -> 0.28 ms, SE at 7x7x960 0.18 -> 0.10 ms). Covered: NHWC pointwise convs, matmuls
    (classifiers) and NHWC SE's FCs; [] for any other kernel, and for weights that are not a
    parameter or whose tile does not divide the features. NHWC full convolutions too (HWIO weights:
    a channel tile read the weights of each tap and input channel as a short row, a weight matrix's
    width apart)."""
    sch = Schedule(tvm.IRModule({"main": func}))
    kernel = classify(sch)
    plans = []

    def plan(block, read: int, features: int, tile: int, group: int = 0) -> None:
        weight = sch.get(block).reads[read].source
        params = [i for i, v in enumerate(func.params) if v.same_as(weight)]
        if params and tile and features % tile == 0:
            plans.append(WeightPacking(sch.get(block).name_hint, read, params[0], tile, group))

    block = sch.get_sblock(kernel.block) if kernel.block else None
    packable = kernel.kind == Kind.MATMUL or (kernel.kind == Kind.POINTWISE and kernel.nhwc
                                               and len(sch.get(block).reads[1].source.shape) == 4)
    dot = integer.takes_dot(sch, block, cpu) if packable else None
    if dot:
        plan(block, 1, int(sch.get(block).writes[0].source.shape[-1]), dot.lanes, dot.group)
    elif packable and kernel.kind == Kind.POINTWISE:
        loops = sch.get_loops(block)  # n, y, x, f, ry, rx, rc
        y, x, f, k = (loop_extent(sch, loops[i]) for i in (1, 2, 3, 6))
        plan(block, 1, f, pointwise.nhwc_columns(y, x, f, k, cpu)[2])
    elif packable:  # the classifier
        if len(sch.get(block).reads[1].source.shape) == 2:
            n = int(sch.get(block).writes[0].source.shape[-1])
            plan(block, 1, n, matmul.columns(n, cpu))
    elif kernel.kind == Kind.CONV and kernel.nhwc and not kernel.integer:
        f = int(sch.get(block).writes[0].source.shape[-1])
        plan(block, 1, f, cpu.for_channels(f).lanes)
    elif kernel.kind == Kind.SQUEEZE_EXCITE:
        for block in reductions(sch):
            if squeeze_excite.is_fc(sch, block) and is_nhwc(sch.get(block).name_hint):
                f = int(sch.get(block).writes[0].source.shape[3])
                read = next(i for i, r in enumerate(sch.get(block).reads)
                            if len(r.source.shape) == 4 and int(r.source.shape[3]) == f
                            and [int(d) for d in r.source.shape[:2]] == [1, 1])
                plan(block, read, f, squeeze_excite.columns(f, cpu))
    return plans


def schedule_kernel(func: tvm.tirx.PrimFunc, cpu: CpuParams,
                    kernel: Optional[Kernel] = None) -> tuple[tvm.tirx.PrimFunc, str]:
    """The default schedule of one kernel (``kernel``: its kind, when already classified):
    (scheduled function, what was chosen)."""
    sch, how = default_schedule(tvm.IRModule({"main": func}), cpu, kernel)
    return sch.mod["main"].with_attr(SCHEDULED, True).with_attr(DEFAULT, how), how


def default_schedule(mod: tvm.IRModule, cpu: CpuParams, kernel: Optional[Kernel] = None) -> tuple[Schedule, str]:
    """The default schedule of the kernel ``mod["main"]`` as a Schedule, whose trace MetaSchedule
    can store, replay and mutate (how tuning is seeded with it)."""
    sch = Schedule(mod)
    how = _schedule(sch, cpu, kernel)
    pack_for_tiles(sch)
    return sch, how


LAYOUT_FREE = "layout_free_buffers"  # TVM's attribute: the kernel parameters its schedule may re-lay out


def pack_for_tiles(sch: Schedule) -> None:
    """The kernel's layout-free weights stored in the order its loops read them, the tile's
    output features contiguous: TVM's RewriteLayout postprocessor, the one MetaSchedule applies
    after every candidate of the search, so a default and a searched schedule pack the same way
    and each tuned channel tile streams its weights from one contiguous run. The packing is a
    preprocessing block of the kernel, which the pipeline splits off and evaluates at compile
    time (``SplitLayoutRewritePreproc``, ``FoldConstant``)."""
    from tvm.s_tir.meta_schedule.postproc import RewriteLayout

    attrs = sch.mod["main"].attrs
    if attrs and LAYOUT_FREE in attrs and len(attrs[LAYOUT_FREE]):
        sch.enter_postproc()
        if not RewriteLayout().apply(sch):
            raise RuntimeError("RewriteLayout could not lay out the kernel's weights for its tiles")


def search_space(sch: Schedule, cpu: CpuParams) -> list[Schedule]:
    """The same schedule as MetaSchedule design spaces (``ScheduleFn``): the same loop structure,
    with every tile size sampled instead of decided. One code path for "default" and "searched".
    A schedule with a yes/no choice (``loops.choose``: the pointwise kernel's tile-loop order)
    gives a second space with the other side of it."""
    spaces = []
    for flip in (False, True):
        space, state = sch.copy(), {"flip": flip, "seen": False}
        tokens = SEARCHING.set(True), CHOICES.set(state)
        try:
            _schedule(space, cpu)
        finally:
            SEARCHING.reset(tokens[0])
            CHOICES.reset(tokens[1])
        spaces.append(space)
        if not state["seen"]:
            break
    return spaces


def decisions(trace) -> list:
    """A trace's sampling decisions in instruction order (what tells a seeded default schedule,
    whose decisions are the heuristic's, from the search's candidates)."""
    made = trace.decisions
    return [[int(d) for d in made[inst]] if isinstance(made[inst], (list, tvm.ir.Array)) else int(made[inst])
            for inst in trace.insts if inst in made]


def _schedule(sch: Schedule, cpu: CpuParams, kernel: Optional[Kernel] = None) -> str:
    kernel = kernel or classify(sch)  # a Kernel names its blocks: valid for any Schedule of the function
    if kernel.is_conv:
        conv = sch.get_sblock(kernel.block)
        pad = find_block(sch, "pad_temp")
        keep = {sch.get(pad).name_hint} if pad is not None and not kernel.kernel_1x1 else set()
        auto_inline(sch, keep)
        epilogue = epilogue_of(sch, conv)
        pad = find_block(sch, "pad_temp") if keep else None
        grouped = kernel.kind in (Kind.DEPTHWISE, Kind.GROUPED)  # one plane per channel group
        if kernel.nhwc and integer.packed_for(sch, conv, cpu):
            how = integer.schedule_dot(sch, conv, epilogue, cpu)
        elif kernel.nhwc:
            how = (pointwise.schedule_nhwc(sch, conv, epilogue, cpu) if kernel.kind == Kind.POINTWISE
                   else direct.schedule_nhwc(sch, conv, epilogue, pad, cpu, grouped))
        elif kernel.kind == Kind.POINTWISE:
            weight = [int(d) for d in sch.get(conv).reads[1].source.shape]
            how = pointwise.schedule_nchw(sch, conv, epilogue, cpu, ihwo=weight[2:] != [1, 1])
        else:
            how = direct.schedule_nchw(sch, conv, epilogue, pad, cpu, grouped)
    elif kernel.kind == Kind.RESIZE:
        how = resize.schedule(sch, cpu)
    elif kernel.kind == Kind.ROWWISE:
        how = rowwise.schedule(sch, cpu)
    elif kernel.kind == Kind.MATMUL:
        auto_inline(sch, set())
        block = sch.get_sblock(kernel.block)
        how = (integer.schedule_dot(sch, block, epilogue_of(sch, block), cpu)
               if integer.packed_for(sch, block, cpu) else matmul.schedule(sch, block, epilogue_of(sch, block), cpu))
    else:
        auto_inline(sch, set())
        fcs = {sch.get(b).name_hint for b in reductions(sch) if squeeze_excite.is_fc(sch, b)}
        for name in fcs:
            squeeze_excite.schedule_fc(sch, sch.get_sblock(name), cpu)
        generic.schedule(sch, cpu, fcs)
        how = "squeeze-excite" if fcs else "generic"
    return how


@dataclass(frozen=True)
class Scheduled:
    """What the default schedules did with one kernel: its kind (``kinds.Kind``'s value) and the
    schedule chosen, in words ("none": left to TVM's plain lowering)."""
    kind: str
    how: str


def summarize(kernels: dict[str, Scheduled]) -> dict:
    """{kernel: Scheduled} -> {kind: count, ..., "unscheduled": [kernels left to plain lowering]}."""
    out: dict = {}
    for name, done in sorted(kernels.items()):
        if done.how == "none":
            out.setdefault("unscheduled", []).append(name)
        else:
            out[done.kind] = out.get(done.kind, 0) + 1
    return out


def is_scheduled(func: tvm.tirx.PrimFunc) -> bool:
    """Whether a kernel already has a schedule (from the tuning database, or a default)."""
    return bool(func.attrs) and any(k in func.attrs for k in (SCHEDULED, "tir.is_scheduled"))


def apply_defaults(cpu: CpuParams, report: Optional[dict] = None,
                   progress: Optional[Callable[[str, int, int], None]] = None) -> tvm.transform.Pass:
    """Schedule every kernel not already scheduled (by the tuning database). A kernel whose
    default schedule fails is left to TVM's plain lowering and named in the log: slower, never
    wrong. ``progress(kernel, n, of)`` is told each kernel before it is scheduled."""

    @tvm.transform.module_pass(opt_level=0, name="mobilec.DefaultSchedules")
    def run(mod, _ctx):
        updates = {}
        todo = [(gv, func) for gv, func in mod.functions.items()
                if isinstance(func, tvm.tirx.PrimFunc) and not is_scheduled(func)]
        for n, (gv, func) in enumerate(todo, start=1):
            if progress is not None:
                progress(gv.name_hint, n, len(todo))
            kernel = classify(Schedule(tvm.IRModule({"main": func})))  # also for the report if scheduling fails
            try:
                updates[gv], how = schedule_kernel(func, cpu, kernel)
            except ERRORS as e:
                log.warning("no default schedule for %s (%s): left to plain lowering", gv.name_hint,
                            str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
                how = "none"
            if report is not None:
                report[gv.name_hint] = Scheduled(kernel.kind.value, how)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return run
