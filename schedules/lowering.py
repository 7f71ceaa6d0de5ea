"""The TIR lowering every mobilec build uses: TVM's own, plus register tiles on the stack.

TVM lowers a kernel's local buffer of 1 KB or more (kMaxStackAlloca) to a TVMBackendAllocWorkspace
/ TVMBackendFreeWorkspace pair around its scope. A default schedule keeps each register tile's
accumulators in such a buffer (14 pixels x 32 channels of float32 is 1.75 KB), scoped inside the
parallel loop, so every tile of every kernel called the workspace pool twice: 4,360 pairs per
MobileNetV3-Large inference, about 3% of one core's time in the pool's lookup (perf), and an
accumulator LLVM sees as heap memory. ``StackTiles`` marks each constant-size buffer up to
``STACK_BUDGET`` bytes per kernel with TVM's ``disable_lower_builtin`` annotation, so LLVM gives it
a stack slot in the function's entry block (once per call, not per tile) and can keep it in
registers. Measured, interleaved in one process, 2 threads: Large 4.30-4.54 -> 4.06-4.11 ms, Small
1.87 -> 1.64 ms; 1 thread unchanged.

TVM's lowering keeps only "global" buffers under 1 KB on the stack; a "local" one of any size got
the pool pair per tile too: every integer dot kernel's 4-byte input quad (schedules/kernels/
integer.py), on x86 and AArch64 alike. ``StackTiles`` marks those as well: Large int8 on AVX-512,
kernel time 1.77 -> 1.65 ms, outputs identical.

The budget keeps well inside the smallest thread stack a kernel runs on (Android's 1 MB default
for a pthread); anything bigger, or of a size known only at run time, stays with the pool.

A kxk convolution that reads its zero border in place (the padding inlined: a condition on the
row and column of each tap) marks its loops over a chunk's rows and a row's tiles ``PARTITION``;
after TVM's lowering ``SplitBorders`` peels each such loop's first and last iteration off, and the
simplifier, knowing the middle loop's range, drops the conditions there: the interior tiles' taps
are straight-line loads and multiply-adds. (TVM's own loop partitioning needs its hint annotation, which does not survive its
64-to-32-bit index narrowing, or every constant loop with a predicate partitioned, which left
unrolled loops of symbolic extent in MobileNetV3-Large.)
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.tirx import compilation_pipeline
from tvm.tirx import stmt as S

TIR_PIPELINE = "mobilec"
PARTITION = "mobilec.partition_borders"  # a loop annotation: split the loop where its zero-border reads stop
STACK_BUDGET = 32 * 1024  # bytes of stack per kernel function for tiles
_STACK_MIN = 1024  # TVM already puts smaller constant "global" buffers on the stack (not "local" ones)
_ON_STACK = "disable_lower_builtin"  # tvm::tirx::transform::kDisableLowerTVMBuiltin


def _size(buffer) -> int | None:
    """Bytes of a buffer of constant shape, else None."""
    n = buffer.dtype.bits * buffer.dtype.lanes // 8
    for d in buffer.shape:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        n *= int(d)
    return n


def _on_stack(stmt, budget: list[int]):
    """``stmt`` with its eligible allocations annotated (``budget[0]``: bytes left); the same object
    where nothing changed."""
    def same(new, old):
        return new is old or new.same_as(old)

    if isinstance(stmt, S.SeqStmt):
        seq = [_on_stack(s, budget) for s in stmt.seq]
        return stmt if all(same(a, b) for a, b in zip(seq, stmt.seq)) else S.SeqStmt(seq, stmt.span)
    if isinstance(stmt, S.For):
        body = _on_stack(stmt.body, budget)
        return stmt if same(body, stmt.body) else S.For(
            stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding, stmt.annotations, stmt.step,
            stmt.span)
    if isinstance(stmt, S.AttrStmt):
        body = _on_stack(stmt.body, budget)
        return stmt if same(body, stmt.body) else S.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body, stmt.span)
    if isinstance(stmt, S.While):
        body = _on_stack(stmt.body, budget)
        return stmt if same(body, stmt.body) else S.While(stmt.condition, body, stmt.span)
    if isinstance(stmt, S.IfThenElse):
        then = _on_stack(stmt.then_case, budget)
        other = _on_stack(stmt.else_case, budget) if stmt.else_case is not None else None
        if same(then, stmt.then_case) and (other is None or same(other, stmt.else_case)):
            return stmt
        return S.IfThenElse(stmt.condition, then, other, stmt.span)
    if isinstance(stmt, S.AllocBuffer) and stmt.buffer.scope() in ("global", "local"):
        size = _size(stmt.buffer)
        small = size is not None and size < _STACK_MIN and stmt.buffer.scope() == "global"  # TVM's own stack
        if size is None or small or size > budget[0] or _ON_STACK in (stmt.annotations or {}):
            return stmt
        budget[0] -= size
        return S.AllocBuffer(stmt.buffer, {**dict(stmt.annotations or {}), _ON_STACK: tvm.tirx.IntImm("int32", 1)},
                             stmt.span)
    return stmt


@tirx.transform.prim_func_pass(opt_level=0, name="mobilec.StackTiles")
def StackTiles(func, _mod, _ctx):  # noqa: N802 - a pass, named like TVM's
    body = _on_stack(func.body, [STACK_BUDGET])
    return func if body.same_as(func.body) else func.with_body(body)


def _split_borders(stmt):
    """``stmt`` with every loop marked ``PARTITION`` (of constant extent n >= 3) split into its first
    iteration, the n - 2 between, and its last; TVM's simplifier then drops each condition that the
    middle loop's range proves (the zero-border reads of the interior tiles). A condition it cannot
    prove stays: the split is correct for any tile size, padding and stride."""
    import tvm_ffi

    def at(body, var, value):
        return tvm_ffi.structural_map(body, [(tvm.ir.expr.Var, lambda v: value if v.same_as(var) else v)])

    def split(loop):
        if PARTITION not in (loop.annotations or {}) or not isinstance(loop.extent, tirx.IntImm):
            return loop
        n, lo, var = int(loop.extent), loop.min, loop.loop_var
        if n < 3 or not isinstance(lo, tirx.IntImm):
            return loop
        def const(value: int):
            return tirx.IntImm(str(loop.extent.ty), value)

        rest = {k: v for k, v in loop.annotations.items() if k != PARTITION}
        first = int(lo)
        middle = S.For(var, const(first + 1), const(n - 2), loop.kind, loop.body, loop.thread_binding, rest, loop.step,
                       loop.span)
        return S.SeqStmt([at(loop.body, var, const(first)), middle, at(loop.body, var, const(first + n - 1))], loop.span)

    return tvm_ffi.structural_map(stmt, [(S.For, split)])


@tirx.transform.prim_func_pass(opt_level=0, name="mobilec.SplitBorders")
def SplitBorders(func, _mod, _ctx):  # noqa: N802 - a pass, named like TVM's
    body = _split_borders(func.body)
    return func if body.same_as(func.body) else func.with_body(body)


def _pipeline(**kwargs):
    lower, host_passes, device = compilation_pipeline.get_tir_pipeline("s_tir", **kwargs)
    # the parts of a split loop define its variables again: made unique before the simplifier
    lower = tvm.ir.transform.Sequential([lower, SplitBorders, tirx.transform.ConvertSSA(),
                                         tirx.transform.StmtSimplify()])

    def host():  # TVM's host finalisation (LowerTVMBuiltin first) after ours
        return tvm.ir.transform.Sequential([StackTiles, host_passes()])

    return lower, host, device


compilation_pipeline.register_tir_pipeline(TIR_PIPELINE, _pipeline)

# Rounding half to even (``tirx.nearbyint``: relax.round, every requantisation) lacks TVM 0.27's
# TVectorizable mark, which ``tirx.round`` and the other math intrinsics have; TVM then leaves a
# vectorised loop that rounds scalar, and LLVM's own vectoriser may pick another loop: the
# requantisation of Large's 112x112x16 int8 depthwise kernel stored its bytes one by one
# (128 vpextrb, 16 gathers per tile) and took 109 us against 21 for the fp32 kernel. LLVM lowers
# the vector form to one instruction (x86 vroundps or vrndscaleps, AArch64 frinti) or splits it where none exists.
if tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable") is None:
    tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)
