"""The one kernel classifier: what kind of kernel a PrimFunc is, read from its TIR (its reduction
blocks, their names as TOPI writes them, buffer shapes and weight types). The default schedules,
weight packing, kernel names and the benchmarks' reports all ask it, so a kernel is the same kind
everywhere.

  kind            what it is                                           its schedule (kernels/)
  pointwise       one 1x1 convolution of stride 1                      pointwise (integer: dot)
  depthwise       one depthwise kxk convolution                        direct, per channel
  grouped         one grouped kxk convolution, not depthwise           direct, per channel
  conv            one full kxk convolution (the stem), or 1x1 strided  direct
  matmul          one matrix product (the classifier)                  matmul (integer: dot)
  squeeze-excite  a pool and 1x1 FCs on the pooled map, with the gate  squeeze_excite + generic
  resize          a separable bilinear resize                          resize
  rowwise         reductions along the innermost axis (softmax, layer  rowwise
                  norm) and elementwise work on the same rows
  elementwise     anything else (pools, adds, transposes)              generic

``integer``: the kernel's weights are integers (a quantised model's integer kernels), which take
the CPU's dot-product instruction where the CPU has one (``targets.INT_DOTS``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from tvm.s_tir import Schedule

from mobilec.schedules.kernels.rowwise import is_rowwise
from mobilec.schedules.kernels.squeeze_excite import is_fc
from mobilec.schedules.loops import child_blocks, find_block, is_nhwc, is_reduction


class Kind(enum.Enum):
    POINTWISE = "pointwise"
    DEPTHWISE = "depthwise"
    GROUPED = "grouped"
    CONV = "direct"
    MATMUL = "matmul"
    SQUEEZE_EXCITE = "squeeze-excite"
    RESIZE = "resize"
    ROWWISE = "rowwise"
    ELEMENTWISE = "generic"


@dataclass(frozen=True)
class Kernel:
    kind: Kind
    block: Optional[str] = None  # the reduction block that makes it its kind (conv, matmul); None for others
    nhwc: bool = False           # a convolution in NHWC (HWIO weights), TOPI's ``*_nhwc`` block
    kernel_1x1: bool = False     # a convolution with a 1x1 window
    integer: bool = False        # integer weights (a quantised model's integer kernel)

    @property
    def is_conv(self) -> bool:
        return self.kind in (Kind.POINTWISE, Kind.DEPTHWISE, Kind.GROUPED, Kind.CONV)


def reductions(sch: Schedule) -> list:
    return [b for b in child_blocks(sch) if is_reduction(sch, b)]


def data_shape(sch: Schedule, block) -> list[int]:
    """The shape of a block's data input before padding (the producer a ``pad_temp`` copies)."""
    src = sch.get(block).reads[0].source
    for producer in sch.get_producers(block):
        p = sch.get(producer)
        if p.writes and p.writes[0].source.same_as(src) and p.reads and not is_reduction(sch, producer):
            return [int(d) for d in p.reads[0].source.shape]
    return [int(d) for d in src.shape]


def classify(sch: Schedule) -> Kernel:
    """The kind of the kernel ``sch`` holds (read only: ``sch`` is not changed)."""
    blocks = reductions(sch)
    names = [sch.get(b).name_hint for b in blocks]
    if len(blocks) == 1 and names[0].startswith(("conv2d", "group_conv2d")):
        return _conv(sch, blocks[0], names[0])
    if find_block(sch, "resize_columns") is not None:
        return Kernel(Kind.RESIZE)
    if len(blocks) == 1 and names[0].startswith("matmul"):
        weight = sch.get(blocks[0]).reads[1].source
        return Kernel(Kind.MATMUL, names[0], integer=str(weight.dtype).startswith("int"))
    if any(is_fc(sch, b) for b in blocks):
        return Kernel(Kind.SQUEEZE_EXCITE)
    if is_rowwise(sch, blocks):
        return Kernel(Kind.ROWWISE)
    return Kernel(Kind.ELEMENTWISE)


def _conv(sch: Schedule, conv, name: str) -> Kernel:
    weight = sch.get(conv).reads[1].source
    shape = [int(d) for d in weight.shape]
    nhwc = is_nhwc(name)  # then HWIO weights
    kernel_1x1 = ([int(sch.get(l).extent) for l in sch.get_loops(conv)[4:6]] == [1, 1] if nhwc  # ry, rx
                  else shape[2:] == [1, 1] or shape[1:3] == [1, 1])
    out = [int(d) for d in sch.get(conv).writes[0].source.shape]
    src = data_shape(sch, conv)
    unit_stride = out[1:3] == src[1:3] if nhwc else out[2:] == src[2:]
    if name.startswith("group_conv2d"):
        kind = Kind.DEPTHWISE if _depthwise(shape, out, src, nhwc) else Kind.GROUPED
    else:
        kind = Kind.POINTWISE if kernel_1x1 and unit_stride else Kind.CONV
    return Kernel(kind, name, nhwc, kernel_1x1, str(weight.dtype).startswith("int"))


def _depthwise(weight: list[int], out: list[int], src: list[int], nhwc: bool) -> bool:
    """One input channel per group and as many outputs as inputs (HWIO: I = 1; OIHW: I = 1)."""
    cin, cout = (src[3], out[3]) if nhwc else (src[1], out[1])
    per_group = weight[-2] if nhwc else weight[1]  # HWIO, or packed [O/b, H, W, I, b]
    return cin == cout and per_group == 1
