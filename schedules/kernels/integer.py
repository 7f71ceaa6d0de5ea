"""Integer pointwise kernels on the CPU's integer dot-product instruction:

  vpmaddwd (x86 AVX2): 8 int32 lanes, each += two 16-bit products: 16 multiply-adds, twice an
             fp32 FMA of the same width; int16 operands (8-bit values minus their zero points)
  sdot     (AArch64 dot product: Cortex-A55/A75/A76 and later): 4 int32 lanes, each += four 8-bit
             products: 16 multiply-adds, four times an fp32 FMA; int8 operands; by element (one
             load of 4 or 2 input quads, each read as a lane) where the input channels allow
  vpdpbusd (x86 AVX-512 VNNI: Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4): 16 int32 lanes (8 in
             its 256-bit form, for channel counts that are multiples of 8 but not 16), each += four
             uint8 x int8 products: four times an fp32 FMA; uint8 inputs (int8 ones read as x + 128)
  avx-vnni (x86 AVX-VNNI without AVX-512: Alder Lake and later client cores, Zen 5): vpdpbusd's
             256-bit form, VEX-encoded (LLVM picks the encoding from the CPU's features)
  smull    (AArch64 without the dot product: Cortex-A72/A73): widening
             multiply-accumulate, 4 int32 lanes each += four 8-bit products: smull and smlal take
             16 int8 products into 8 int16 lanes (two products each), sadalp adds the lanes' pairs
             into the int32 accumulators: 16 multiply-adds in 3 instructions, where fp32's fmla
             does 4 in one; int8 operands, whose weights must keep two products within int16
             (|w_a| + |w_b| <= 255 for the two weights a lane sums: checked per layer)

The kernels are the 1x1 convolutions and matrix products of a quantised model
(``compiler/quantized.py``). The weights are packed at compile time so each step reads one
contiguous vector: [.., K, N] -> [N/lanes, .., K/group, lanes, group] (output channel blocks of a
vector's lanes, input channels in groups, the group innermost). The schedule is the fp32 pointwise
one's: a register tile of pixels x vectors of output channels, the accumulators in registers across
the whole reduction, the requantisation epilogue applied per tile; the innermost lanes x group is
one tensor intrinsic (ours for vpmaddwd, vpdpbusd and sdot by element, TVM's own for sdot's quad form).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import tvm
from tvm.s_tir import Schedule, TensorIntrin
from tvm.script import tirx as T

from mobilec.schedules.loops import split
from mobilec.schedules.tile_cost import best_tile
from mobilec.targets import INT_DOTS, DotForm, dot_form


@dataclass(frozen=True)
class DotInstruction(DotForm):
    """One form of a CPU's dot-product instruction (``targets.INT_DOTS``) with its registered TVM
    tensor intrinsic."""
    intrinsic: str = ""


def _desc(lanes: int, group: int, data: str, weight: str):
    """What a dot-product instruction computes: ``lanes`` int32 sums, each += ``group`` products of
    one broadcast input group and a row of the packed weights."""

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((group,), data, offset_factor=1), b: T.Buffer((lanes, group), weight, offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:group], b[0:lanes, 0:group])
            T.writes(c[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    return desc


def _lane_desc(lanes: int, group: int, steps: int, dtype: str):
    """``steps`` groups of a by-element dot product: c[i] += sum over s, k of a[s * group + k] * b[s, i, k]
    (the packed weights of ``steps`` consecutive groups are one contiguous block)."""

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((steps * group,), dtype, offset_factor=1),
             b: T.Buffer((steps, lanes, group), dtype, offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:steps * group], b[0:steps, 0:lanes, 0:group])
            T.writes(c[0:lanes])
            for s in T.serial(0, steps):
                for i in T.serial(0, lanes):
                    for k in T.serial(0, group):
                        with T.sblock("update"):  # the kernel's two axes: channel, input channel
                            vi = T.axis.spatial(lanes, i)
                            vk = T.axis.reduce(steps * group, s * group + k)
                            c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vk // group, vi, vk % group], "int32")

    return desc


def _sdot_lane_impl(steps: int):
    """``steps`` sdot by element (2 or 4): one load of the input's ``steps`` quads, each read as a
    lane (``sdot v.4s, v.16b, v.4b[s]``), where the quad form broadcasts each quad with its own
    ld1r, a load that also takes a vector-pipe slot beside sdot on Cortex-A76."""
    width = 4 * steps

    def dots(c, b, whole):
        for s in range(steps):
            c = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), c, b.vload([s, 0, 0], dtype="int8x16"),
                T.reinterpret(T.Shuffle([whole] * (4 // steps), [s, s, s, s]), dtype="int8x16"), dtype="int32x4")
        return c

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((width,), "int8", offset_factor=1), b: T.Buffer((steps, 4, 4), "int8", offset_factor=1),
             c: T.Buffer((4,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:4], a[0:width], b[0:steps, 0:4, 0:4])
            T.writes(c[0:4])
            whole = T.reinterpret(a.vload([0], f"int8x{width}"), dtype=f"int32x{steps}")
            c[T.ramp(T.int32(0), 1, 4)] = dots(c.vload([0], dtype="int32x4"), b, whole)

    return impl


_WIDENING = {  # (multiply into int16, pairwise add into int32) per instruction; ARMv7's vmull/vpadal would be a row
    "smull": ("llvm.aarch64.neon.smull.v8i16", "llvm.aarch64.neon.saddlp.v4i32.v8i16"),
}


def _widening_impl(name: str):
    """Two steps of int8 pairs: each input pair (k, k+1) broadcast to 4 lanes and multiplied with
    the packed weights' [4 channels x 2] block (smull), the second step added in int16 (smlal:
    LLVM fuses the add), then the int16 lanes' pairs added into the int32 accumulators (sadalp)."""
    multiply, pairwise = _WIDENING[name]

    def product(pairs, s, b):
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(multiply), T.reinterpret(T.Shuffle([pairs, pairs], [s, s, s, s]), dtype="int8x8"),
            b.vload([s, 0, 0], dtype="int8x8"), dtype="int16x8")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "int8", offset_factor=1), b: T.Buffer((2, 4, 2), "int8", offset_factor=1),
             c: T.Buffer((4,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:4], a[0:4], b[0:2, 0:4, 0:2])
            T.writes(c[0:4])
            pairs = T.reinterpret(a.vload([0], "int8x4"), dtype="int16x2")
            c[T.ramp(T.int32(0), 1, 4)] = c.vload([0], dtype="int32x4") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(pairwise), product(pairs, 0, b) + product(pairs, 1, b), dtype="int32x4")

    return impl


def _pmaddwd_impl():
    lanes, group = 8, 2

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((group,), "int16", offset_factor=1), b: T.Buffer((lanes, group), "int16", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:group], b[0:lanes, 0:group])
            T.writes(c[0:lanes])
            pair = T.reinterpret(a.vload([0], "int16x2"), dtype="int32")  # one input pair, broadcast
            c[T.ramp(T.int32(0), 1, lanes)] = c[T.ramp(T.int32(0), 1, lanes)] + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.reinterpret(T.broadcast(pair, lanes), dtype="int16x16"), b.vload([0, 0], dtype="int16x16"),
                dtype="int32x8")

    return impl


def _vpdpbusd_impl(lanes: int):
    group = 4
    bits = 32 * lanes

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((group,), "uint8", offset_factor=1), b: T.Buffer((lanes, group), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:group], b[0:lanes, 0:group])
            T.writes(c[0:lanes])
            quad = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")  # one input quad, broadcast
            c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(  # LLVM 21 and later: byte vectors
                T.llvm_lookup_intrinsic_id(f"llvm.x86.avx512.vpdpbusd.{bits}"),
                c.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(T.broadcast(quad, lanes), dtype=f"int8x{lanes * group}"),
                b.vload([0, 0], dtype=f"int8x{lanes * group}"), dtype=f"int32x{lanes}")

    return impl


def _intrinsic(name: str, form: DotForm) -> str:
    """Register the tensor intrinsic of one form of the instruction ``name``; its name. Which code
    a form gets follows from its facts (``targets.DotForm``): int16 sums are the widening multiply,
    uint8 data is vpdpbusd, several steps by element are sdot's lane form, int16 operands pmaddwd,
    and a single-step int8 quad is TVM's own sdot intrinsic."""
    lanes, group, steps = form.lanes, form.group, form.steps
    if form.int16_sums:
        intrin, desc, impl = f"mobilec.{name}_{lanes}x{group}x{steps}", _lane_desc(lanes, group, steps, form.dtype), \
            _widening_impl(name)
    elif form.data == "uint8":
        intrin, desc, impl = f"mobilec.vpdpbusd_{lanes}x{group}", _desc(lanes, group, "uint8", "int8"), _vpdpbusd_impl(lanes)
    elif steps > 1:
        intrin, desc, impl = f"mobilec.{name}_lane_{lanes}x{group * steps}", _lane_desc(lanes, group, steps, form.dtype), \
            _sdot_lane_impl(steps)
    elif form.dtype == "int16":
        intrin, desc, impl = f"mobilec.{name}_{lanes}x{group}", _desc(lanes, group, "int16", "int16"), _pmaddwd_impl()
    else:
        from tvm.s_tir.tensor_intrin import arm_cpu  # registers TVM's dot_4x4_i8i8s32_sdot

        return arm_cpu.ARM_DOT_4x4_i8_SDOT_INTRIN
    TensorIntrin.register(intrin, desc, impl, override=True)
    return intrin


_REGISTERED: dict[str, tuple[DotInstruction, ...]] = {}


def instructions(name: str) -> tuple[DotInstruction, ...]:
    """The forms of the dot-product instruction a CPU preset names (``CpuPreset.int_dot``), widest
    first, their tensor intrinsics registered on first use."""
    if name not in INT_DOTS:
        raise ValueError(f"no integer dot-product instruction {name!r}")
    if name not in _REGISTERED:
        _REGISTERED[name] = tuple(DotInstruction(**asdict(f), intrinsic=_intrinsic(name, f)) for f in INT_DOTS[name])
    return _REGISTERED[name]


def instruction(name: str, k: int, n: int) -> Optional[DotInstruction]:
    """``targets.dot_form``'s form with its tensor intrinsic registered, or None."""
    form = dot_form(name, k, n)
    return instructions(name)[INT_DOTS[name].index(form)] if form else None


def grouped_layout(ndim: int, lanes: int, group: int) -> tvm.tirx.IndexMap:
    """[.., K, N] -> [N/lanes, .., K/group, lanes, group]."""
    return tvm.tirx.IndexMap.from_func(
        lambda *ax: (ax[-1] // lanes, *ax[:-2], ax[-2] // group, ax[-1] % lanes, ax[-2] % group), ndim=ndim)


def takes_dot(sch: Schedule, block, cpu) -> Optional[DotInstruction]:
    """The form of the CPU's instruction for a 1x1 convolution or matrix product of its operand
    types into int32 whose channels fit it (K a multiple of the group, N of the lanes); None if
    there is none."""
    stmt = sch.get(block)
    if not cpu.int_dot or str(stmt.writes[0].source.dtype) != "int32" or len(stmt.reads) < 2:
        return None
    data, weight = stmt.reads[0].source, stmt.reads[1].source
    dot = instruction(cpu.int_dot, int(data.shape[-1]), int(stmt.writes[0].source.shape[-1]))
    if dot is None or str(data.dtype) != dot.data_dtype or str(weight.dtype) != dot.dtype:
        return None
    return dot


def packed_for(sch: Schedule, block, cpu) -> Optional[DotInstruction]:
    """The form of this CPU's instruction the kernel's weights are packed for by ``grouped_layout``
    (a trailing lanes x group block), or None. A float kernel is None at once: registering the
    instructions imports TVM's tensor intrinsics (``instructions``: 40-100 s on a 2-core host)."""
    weight = sch.get(block).reads[1].source
    if not cpu.int_dot or not str(weight.dtype).startswith("int"):
        return None
    return next((d for d in instructions(cpu.int_dot) if str(weight.dtype) == d.dtype
                 and [int(x) for x in weight.shape[-2:]] == [d.lanes, d.group] and int(weight.shape[-3]) % d.steps == 0),
                None)


def _tiles(y: int, x: int, vectors: int, registers: int, dot: DotInstruction) -> tuple[int, int, int]:
    """(rows, pixels, vectors of output channels) of the register tile, scored as the fp32
    pointwise tiles are (``tile_cost.best_tile``): an instruction without an in-place add (vpmaddwd)
    costs two vector ops per step and, with more than one vector, a register for the product; so
    on AVX2 it keeps a long row x one vector (measured: 2-vector tiles ran Large int8 11% slower,
    6.30 against 5.67 ms), where fp32's FMAs take 2x2 pixels x 2 vectors."""
    extra = 0 if dot.fused_add else 1  # the product's register, beside a second vector's
    return best_tile(y, x, [v for v in (1, 2, 3, 4) if vectors % v == 0],
                     lambda v: registers - v - 1 - (extra if v > 1 else 0), ops=1 + extra, most=16)[1:]


def schedule_dot(sch: Schedule, block, epilogue, cpu) -> str:
    """Schedule one packed integer 1x1 convolution (NHWC: n, y, x, f, ry, rx, rc) or matrix product
    (m, n, k), tile sizes through ``loops.split`` (sampled when searching)."""
    dot = packed_for(sch, block, cpu)
    loops = sch.get_loops(block)
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    spatial = [l for l, k in zip(loops, kinds) if k == 0]
    reduce = [l for l, k in zip(loops, kinds) if k != 0]
    row = spatial[-3] if len(spatial) >= 3 else None  # a convolution's y; a matrix product has none
    pixel, channel = spatial[-2], spatial[-1]
    x, f, k = (int(sch.get(l).extent) for l in (pixel, channel, reduce[-1]))
    y = int(sch.get(row).extent) if row is not None else 1
    pixels = 1
    for l in spatial[:-1]:
        pixels *= int(sch.get(l).extent)
    rows, cols, vectors = _tiles(y, x, f // dot.lanes, cpu.registers, dot)
    fo, fi = sch.split(channel, [None, dot.lanes])
    ko, ks, ki = sch.split(reduce[-1], [None, dot.steps, dot.group])
    yo, yi = split(sch, row, rows, 16) if row is not None else (None, None)
    po, pi = split(sch, pixel, cols, 16)
    vo, vi = split(sch, fo, vectors, 4)
    # the bigger operand streams through once: weights k*f against the map's pixels*k
    tiles = [yo, po] if row is not None else [po]
    outer = spatial[:-3 if row is not None else -2] + ([vo, *tiles] if f >= pixels else [*tiles, vo])
    register_tile = ([yi] if row is not None else []) + [pi, vi]
    sch.reorder(*outer, *reduce[:-1], ko, *register_tile, ks, fi, ki)
    par = sch.fuse(*outer)
    sch.parallel(par)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, par, preserve_unit_loops=True)
        inner = sch.get_loops(epilogue)[-1]
        if int(sch.get(inner).extent) % dot.lanes == 0:
            _, lanes = sch.split(inner, [None, dot.lanes])
            sch.vectorize(lanes)
    init = sch.decompose_reduction(block, reduce[0] if len(reduce) > 1 else ko)
    sch.tensorize(ks if dot.steps > 1 else fi, dot.intrinsic)
    for loop in register_tile:
        if int(sch.get(loop).extent) > 1:
            sch.unroll(loop)
    sch.vectorize(sch.get_loops(init)[-1])
    return f"pointwise {cpu.int_dot} {rows}x{cols} pixels x {vectors * dot.lanes} channels"
