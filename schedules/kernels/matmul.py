"""Matrix products (the classifier; a transformer's projections, MLPs and attention products):
output features vectorised, the weights packed per column tile."""

from __future__ import annotations

from tvm.s_tir import Schedule

from mobilec.schedules.loops import CpuParams, divisor_tile, loop_extent, row_tile_for, tile_reduction


def columns(n: int, cpu: CpuParams) -> int:
    return divisor_tile(n, cpu.for_channels(n).lanes, 5)  # 5: 1000 classes = 25 x 40


def schedule(sch: Schedule, block, epilogue, cpu: CpuParams) -> str:
    """Classifier: out[i, j] = sum_k x[i, k] * W[k, j], j contiguous."""
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    extents = [loop_extent(sch, l) for l, k in zip(sch.get_loops(block), kinds) if k == 0]
    col = columns(extents[-1], cpu)
    cpu = cpu.for_channels(extents[-1])  # AVX-512's 16 lanes where they divide the columns
    rows = row_tile_for(extents[-2], -(-col // cpu.lanes), cpu) if len(extents) > 1 else 1
    tile_reduction(sch, block, [1] * (len(extents) - 2) + [rows, col][-len(extents):], cpu, epilogue)
    return f"matmul {rows} rows x {col} columns"
