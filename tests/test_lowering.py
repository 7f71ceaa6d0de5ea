"""mobilec's TIR lowering: register tiles on the stack, not in TVM's workspace pool; rounding vectorised."""

import numpy as np
import pytest


def _tiled_matmul(n: int, tile: int):
    """C = A @ A + 1 with a per-task accumulator tile of ``tile`` rows (``tile * n * 4`` bytes)."""
    import tvm
    from tvm import te

    a = te.placeholder((n, n), name="A")
    k = te.reduce_axis((0, n), "k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * a[k, j], axis=k), name="C")
    d = te.compute((n, n), lambda i, j: c[i, j] + 1.0, name="D")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, d]))
    outer, _ = sch.split(sch.get_loops(sch.get_sblock("C"))[0], [None, tile])
    sch.parallel(outer)
    sch.reverse_compute_at(sch.get_sblock("D"), outer)  # C's tile allocated inside the parallel loop
    return sch.mod


@pytest.mark.build
@pytest.mark.parametrize("tile, pooled", [(16, False), (256, True)])
def test_register_tiles_go_on_the_stack_up_to_the_budget(tile, pooled):
    """A 4 KB tile (over TVM's 1 KB stack limit) is a stack slot with mobilec's lowering and a
    workspace-pool pair per task with TVM's; a 64 KB one (over ``STACK_BUDGET``) stays pooled. The
    values are the same either way."""
    import tvm

    from mobilec.targets import resolve
    from mobilec.schedules.lowering import STACK_BUDGET, TIR_PIPELINE

    assert (tile * 64 * 4 > STACK_BUDGET) == pooled
    target = resolve("x86_64-linux-gnu", "core-avx2", 2).tvm_target()
    n = max(64, tile)
    mod = _tiled_matmul(n, tile)
    theirs, ours = (tvm.compile(mod, target=target, tir_pipeline=p) for p in ("default", TIR_PIPELINE))
    assert "TVMBackendAllocWorkspace" in theirs.mod.inspect_source("asm")
    assert ("TVMBackendAllocWorkspace" in ours.mod.inspect_source("asm")) == pooled
    x = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros((n, n), np.float32))
    ours(tvm.runtime.tensor(x), y)
    np.testing.assert_allclose(y.numpy(), x @ x + 1, rtol=1e-4, atol=1e-3)


@pytest.mark.build
@pytest.mark.parametrize("cpu", ["core-avx2", "cascadelake"])
def test_a_model_build_calls_no_workspace_pool(cpu):
    """A model's kernels keep their tiles off the pool: Large's 14x14 112 -> 672 expansion, whose
    accumulator tile is 1.75 KB on AVX-512 (one pool pair per tile before: 4,360 per Large
    inference). Assembly only: builds on any x86 host."""
    from helpers import assembly
    from graphs import conv, model

    nodes, inits = conv("input", "output", 112, 672, k=1)
    asm = assembly(model(nodes, inits, inputs=[("input", (1, 112, 14, 14))], output=("output", (1, 672, 14, 14))),
                   "x86_64-linux-gnu", cpu)
    assert "vfmadd" in asm and "TVMBackendAllocWorkspace" not in asm


@pytest.mark.build
@pytest.mark.parametrize("triple, cpu, dot", [("x86_64-linux-gnu", "core-avx2", "vpmaddwd"),
                                              ("x86_64-linux-gnu", "cascadelake", "vpdpbusd"),
                                              ("aarch64-linux-gnu", "cortex-a76", "sdot")])
def test_integer_kernels_call_no_workspace_pool(triple, cpu, dot, tmp_path):
    """An integer dot kernel's 4-byte "local" buffer (the input quad it broadcasts) is on the stack
    too: TVM's lowering puts only small "global" buffers there and gave "local" ones a pool pair
    per tile (32 of Large's int8 kernels on AVX-512: 1.77 -> 1.65 ms kernel time, outputs
    identical)."""
    import onnx

    from helpers import assembly
    from graphs import conv, model
    from mobilec.frontends.quantize import QuantizeConfig, quantize_model

    nodes, inits = conv("input", "output", 64, 64, k=1)
    src, qdq = tmp_path / "m.onnx", tmp_path / "m-int8.onnx"
    onnx.save(model(nodes, inits, inputs=[("input", (1, 64, 14, 14))], output=("output", (1, 64, 14, 14))), src)
    quantize_model(src, qdq, QuantizeConfig(random=4, held_out=1))
    asm = assembly(str(qdq), triple, cpu)
    assert dot in asm and "TVMBackendAllocWorkspace" not in asm


@pytest.mark.build
@pytest.mark.parametrize("cpu", ["core-avx2", "cascadelake"])
def test_requantisation_rounds_and_stores_whole_vectors(cpu, tmp_path):
    """Rounding half to even (``tirx.nearbyint``, every requantisation) is vectorised with its loop:
    TVM 0.27 leaves it unmarked as vectorisable, so the loop stayed scalar and LLVM vectorised the
    pixel loop around it instead. Large's 112x112x16 int8 depthwise stored its bytes one by one
    (vpextrb) and gathered its accumulators: 109 us against 21 for the fp32 kernel, 33 after."""
    import onnx
    from onnx import helper

    from helpers import assembly
    from graphs import conv, model
    from mobilec.frontends.quantize import QuantizeConfig, quantize_model

    n, i = conv("input", "c", cin=16, cout=16, k=3, group=16)
    src, qdq = tmp_path / "m.onnx", tmp_path / "m-int8.onnx"
    onnx.save(model(n + [helper.make_node("Relu", ["c"], ["output"])], i, inputs=(("input", (1, 16, 16, 16)),),
                    output=("output", (1, 16, 16, 16))), src)
    quantize_model(src, qdq, QuantizeConfig(random=4, held_out=1))
    asm = assembly(str(qdq), "x86_64-linux-gnu", cpu)
    assert "vpextrb" not in asm and "vgather" not in asm


def _bordered_conv1d():
    """A 3-tap convolution over 16 values with a zero border read in place, its tile loop marked
    ``PARTITION`` (as the default kxk schedules mark theirs)."""
    from tvm.script import tirx as T

    from mobilec.schedules.lowering import PARTITION

    @T.prim_func
    def conv1d(a: T.Buffer((16,), "float32"), w: T.Buffer((3,), "float32"), b: T.Buffer((16,), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for io in T.serial(4, annotations={PARTITION: 1}):
            for ii in T.unroll(4):
                b[io * 4 + ii] = T.float32(0)
                for k in T.unroll(3):
                    b[io * 4 + ii] = b[io * 4 + ii] + T.if_then_else(
                        1 <= io * 4 + ii + k and io * 4 + ii + k < 17, a[io * 4 + ii + k - 1], T.float32(0)) * w[k]

    return conv1d


@pytest.mark.build
def test_a_marked_loop_splits_into_border_tiles_and_a_condition_free_interior():
    import tvm
    from tvm import tirx

    from mobilec.schedules.lowering import TIR_PIPELINE, SplitBorders

    func = _bordered_conv1d()
    split = tvm.ir.transform.Sequential([SplitBorders, tirx.transform.ConvertSSA(), tirx.transform.StmtSimplify()])(
        tvm.IRModule({"main": func}))["main"]
    body = split.body
    while not isinstance(body, tirx.stmt.SeqStmt):
        body = body.body
    first, middle, last = body.seq
    assert isinstance(middle, tirx.stmt.For) and int(middle.min) == 1 and int(middle.extent) == 2
    assert "if_then_else" not in middle.script()  # the interior tiles: every tap in range
    assert "if_then_else" in first.script() and "if_then_else" in last.script()  # the borders keep theirs
    a, w = (np.random.default_rng(i).standard_normal(n).astype(np.float32) for i, n in ((0, 16), (1, 3)))
    want = np.convolve(np.pad(a, 1), w[::-1], mode="valid")
    target = tvm.target.Target({"kind": "llvm"})
    for pipeline in ("default", TIR_PIPELINE):
        b = tvm.runtime.tensor(np.zeros(16, np.float32))
        tvm.compile(tvm.IRModule({"main": func}), target=target, tir_pipeline=pipeline)(
            tvm.runtime.tensor(a), tvm.runtime.tensor(w), b)
        np.testing.assert_allclose(b.numpy(), want, rtol=1e-5, atol=1e-6)
