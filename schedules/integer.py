"""Integer pointwise kernels: 16-bit pairs multiplied and summed into int32 lanes, one instruction
per 16 multiply-adds (AVX2's vpmaddwd: twice the multiply-adds of an fp32 FMA of the same width).

The kernels are the 1x1 convolutions and matrix products of a quantised model
(``compiler/quantized.py``): int16 inputs (an 8-bit activation minus its zero point), int16
weights (8-bit, minus theirs), int32 accumulators. The weights are packed at compile time so
each step reads one contiguous 32-byte run: [.., K, N] -> [N/8, .., K/2, 8, 2] (output channel
blocks of 8 lanes, input channels in pairs, the pair innermost). The schedule is the fp32
pointwise one's: a register tile of pixels x vectors of output channels, the accumulators in
registers across the whole reduction, the requantisation epilogue applied per tile; the
innermost 8 channels x 2 input channels are one tensor intrinsic.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import Schedule, TensorIntrin
from tvm.script import tirx as T

LANES = 8  # int32 lanes of one 256-bit register
PAIR = 2  # input channels per 16-bit pair
_INTRINSICS: dict[str, str] = {}  # LLVM intrinsic -> registered tensor intrinsic name


def _desc():
    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((PAIR,), "int16", offset_factor=1), b: T.Buffer((LANES, PAIR), "int16", offset_factor=1),
             c: T.Buffer((LANES,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:LANES], a[0:PAIR], b[0:LANES, 0:PAIR])
            T.writes(c[0:LANES])
            for i in T.serial(0, LANES):
                for k in T.serial(0, PAIR):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    return desc


def _impl(llvm_intrinsic: str):
    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((PAIR,), "int16", offset_factor=1), b: T.Buffer((LANES, PAIR), "int16", offset_factor=1),
             c: T.Buffer((LANES,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:LANES], a[0:PAIR], b[0:LANES, 0:PAIR])
            T.writes(c[0:LANES])
            pair = T.reinterpret(a.vload([0], "int16x2"), dtype="int32")  # one input pair, broadcast
            c[T.ramp(T.int32(0), 1, LANES)] = c[T.ramp(T.int32(0), 1, LANES)] + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrinsic),
                T.reinterpret(T.broadcast(pair, LANES), dtype="int16x16"), b.vload([0, 0], dtype="int16x16"),
                dtype="int32x8")

    return impl


def intrinsic(llvm_intrinsic: str) -> str:
    """The tensor intrinsic (8 int32 lanes += 8x2 int16 weights . 2 int16 inputs) for this CPU's
    16-bit pair instruction, registered once."""
    if llvm_intrinsic not in _INTRINSICS:
        name = "mobilec." + llvm_intrinsic.replace(".", "_")
        TensorIntrin.register(name, _desc(), _impl(llvm_intrinsic), override=True)
        _INTRINSICS[llvm_intrinsic] = name
    return _INTRINSICS[llvm_intrinsic]


def pairs_layout(ndim: int) -> tvm.tirx.IndexMap:
    """[.., K, N] -> [N/8, .., K/2, 8, 2]."""
    return tvm.tirx.IndexMap.from_func(
        lambda *ax: (ax[-1] // LANES, *ax[:-2], ax[-2] // PAIR, ax[-1] % LANES, ax[-2] % PAIR), ndim=ndim)


def takes_pairs(sch: Schedule, block, cpu) -> bool:
    """A 1x1 convolution or matrix product of int16 operands into int32, whose channels fit the
    intrinsic: K even, N a multiple of 8, on a CPU that has the instruction."""
    stmt = sch.get(block)
    if not cpu.int16_dot or str(stmt.writes[0].source.dtype) != "int32" or len(stmt.reads) < 2:
        return False
    data, weight = stmt.reads[0].source, stmt.reads[1].source
    if str(data.dtype) != "int16" or str(weight.dtype) != "int16":
        return False
    k, n = int(data.shape[-1]), int(stmt.writes[0].source.shape[-1])
    return k % PAIR == 0 and n % LANES == 0


def _tiles(pixels: int, vectors: int, registers: int) -> tuple[int, int]:
    """(pixels, vectors of 8 channels) of the register tile: the most accumulators that fit beside
    the weight vectors and the broadcast input pair, preferring fewer, longer rows of pixels."""
    best = (0, 1, 1)
    for v in (1, 2, 3, 4):
        if vectors % v:
            continue
        for rows in range(1, min(pixels, 16) + 1):
            if pixels % rows == 0 and rows * v + v + 1 <= registers:
                best = max(best, (rows * v, rows, v))
    return best[1], best[2]


def schedule_pairs(sch: Schedule, block, epilogue, cpu, split) -> str:
    """Schedule one packed int16 1x1 convolution (NHWC: n, y, x, f, ry, rx, rc) or matrix product
    (m, n, k). ``split(sch, loop, inner, most)`` is the default schedules' (sampled when searching)."""
    loops = sch.get_loops(block)
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    spatial = [l for l, k in zip(loops, kinds) if k == 0]
    reduce = [l for l, k in zip(loops, kinds) if k != 0]
    pixel, channel = spatial[-2], spatial[-1]
    x, f, k = (int(sch.get(l).extent) for l in (pixel, channel, reduce[-1]))
    pixels = 1
    for l in spatial[:-1]:
        pixels *= int(sch.get(l).extent)
    rows, vectors = _tiles(x, f // LANES, 16)
    fo, fi = sch.split(channel, [None, LANES])
    ko, ki = sch.split(reduce[-1], [None, PAIR])
    po, pi = split(sch, pixel, rows, 16)
    vo, vi = split(sch, fo, vectors, 4)
    # the bigger operand streams through once: weights k*f against the map's pixels*k
    outer = spatial[:-2] + ([vo, po] if f >= pixels else [po, vo])
    sch.reorder(*outer, *reduce[:-1], ko, pi, vi, fi, ki)
    par = sch.fuse(*outer)
    sch.parallel(par)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, par, preserve_unit_loops=True)
        inner = sch.get_loops(epilogue)[-1]
        if int(sch.get(inner).extent) % LANES == 0:
            _, lanes = sch.split(inner, [None, LANES])
            sch.vectorize(lanes)
    init = sch.decompose_reduction(block, reduce[0] if len(reduce) > 1 else ko)
    sch.tensorize(fi, intrinsic(cpu.int16_dot))
    for loop in (pi, vi):
        if int(sch.get(loop).extent) > 1:
            sch.unroll(loop)
    sch.vectorize(sch.get_loops(init)[-1])
    return f"pointwise int16 pairs {rows} pixels x {vectors * LANES} channels"
