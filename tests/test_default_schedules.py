"""Default schedules: target parameters and tile choice (structure), and every kernel kind a
MobileNet is made of scheduled and numerically equal to onnxruntime (host build). The same
kernels on the emulated aarch64 device are in test_emulator.py."""

import itertools
from collections import Counter

import numpy as np
import pytest
from onnx import helper

from helpers import assembly, run_here_or_skip
from graphs import assert_matches_onnxruntime, chain, const, conv, depthwise_graph, hswish_nodes, model, pointwise_graph
from mobilec.targets import CpuParams, cpu_params


def _stem():
    n, i = chain(conv("input", "stem", 3, 16, k=3, stride=2), hswish_nodes("stem", "output", "onnx"))
    return model(n, i, inputs=[("input", (1, 3, 64, 64))], output=("output", (1, 16, 32, 32)))


def _full(hw, cin, cout, stride, group=1):
    """A full (or grouped) 3x3 convolution with more taps x input channels than are unrolled (ResNet's)."""
    n, i = chain(conv("input", "c", cin, cout, k=3, stride=stride, group=group),
                 ([helper.make_node("Relu", ["c"], ["output"])], []))
    out = (hw + stride - 1) // stride
    return model(n, i, inputs=[("input", (1, cin, hw, hw))], output=("output", (1, cout, out, out)))


def _scheduled_kernels(proto, cpu_name="core-avx2"):
    """The default-scheduled kernels of ``proto`` as TVMScript text, per kernel."""
    from mobilec.compiler.importer import import_onnx
    from mobilec.compiler.pipeline import PipelineOptions, run_until
    from mobilec.schedules.defaults import schedule_kernel
    from mobilec.targets import resolve
    import tvm

    target = resolve("x86_64-linux-gnu", cpu_name).tvm_target()
    mod = run_until(import_onnx(proto).mod, target, PipelineOptions(), "lower")
    return {gv.name_hint: schedule_kernel(f, cpu_params(target))[0].script() for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint}


def _se(c=32, hw=14, squeeze=8):
    n, i = chain(
        ([helper.make_node("GlobalAveragePool", ["input"], ["pool"])], []),
        conv("pool", "fc1", c, squeeze, k=1), ([helper.make_node("Relu", ["fc1"], ["r"])], []),
        conv("r", "fc2", squeeze, c, k=1, seed=1),
        ([helper.make_node("HardSigmoid", ["fc2"], ["gate"], alpha=1 / 6, beta=0.5),
          helper.make_node("Mul", ["input", "gate"], ["output"])], []))
    return model(n, i, inputs=[("input", (1, c, hw, hw))], output=("output", (1, c, hw, hw)))


def _classifier(cin=64, cout=40):
    rng = np.random.default_rng(3)
    n, i = chain(
        ([helper.make_node("Flatten", ["input"], ["flat"]),
          helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], transB=1)],
         [const("fc_w", rng.standard_normal((cout, cin)) / 8), const("fc_b", rng.standard_normal(cout))]),
        hswish_nodes("fc", "output", "onnx"))
    return model(n, i, inputs=[("input", (1, cin, 1, 1))], output=("output", (1, cout)))


KERNELS = [
    ("pointwise-wide-map", "pointwise", lambda: pointwise_graph(32, 16, 24)),
    ("pointwise-narrow-map", "pointwise", lambda: pointwise_graph(7, 32, 48)),
    ("pointwise-no-epilogue", "pointwise", lambda: pointwise_graph(7, 32, 48, bias=False)),
    ("pointwise-odd-channels", "pointwise", lambda: pointwise_graph(10, 12, 20)),
    ("depthwise-3x3-s1", "depthwise", lambda: depthwise_graph(28, 16, 3, 1)),
    ("depthwise-3x3-s2", "depthwise", lambda: depthwise_graph(32, 16, 3, 2)),
    ("depthwise-5x5-s2-odd-row", "depthwise", lambda: depthwise_graph(14, 24, 5, 2)),
    ("depthwise-5x5-s1-row-7", "depthwise", lambda: depthwise_graph(7, 24, 5, 1)),
    ("stem-3x3-s2", "direct", _stem),
    ("full-3x3-deep-s1", "direct", lambda: _full(14, 64, 96, 1)),
    ("full-3x3-deep-s2", "direct", lambda: _full(14, 96, 64, 2)),
    ("depthwise-9x9-channels-no-vector-divides", "depthwise", lambda: depthwise_graph(14, 90, 9, 1)),
    ("grouped-3x3-8-per-group-s1", "grouped", lambda: _full(14, 48, 48, 1, group=6)),
    ("grouped-3x3-8-per-group-s2", "grouped", lambda: _full(14, 104, 104, 2, group=13)),
    ("grouped-3x3-16-per-group", "grouped", lambda: _full(14, 64, 64, 1, group=4)),
    ("squeeze-excite", "squeeze-excite", _se),
    ("classifier", "matmul", _classifier),
]


# --------------------------------------------------------------------------------------------- structure

@pytest.mark.structure
def test_a_deep_full_conv_keeps_its_input_channels_a_loop():
    """3x3 over 64 input channels: the taps unrolled, the 64 channels a loop (unrolled whole, the
    576 steps of a register tile took LLVM minutes per kernel: ResNet-18 had no library after 15)."""
    text = "\n".join(_scheduled_kernels(_full(14, 64, 96, 1)).values())
    assert "in range(T.int64(64))" in text, text
    assert "T.unroll(T.int64(64))" not in text


@pytest.mark.structure
@pytest.mark.parametrize("cpu_name,run", [("core-avx2", 6), ("cascadelake", 15)])
def test_channels_no_vector_divides_take_a_register_run_that_does(cpu_name, run):
    """90 channels (MixNet) on 8 lanes: a tile of the longest run dividing 90 that fits one
    register, so no lane predicate is left in the tile (which kept TVM from vectorising at all);
    1x1 convolutions of 100 and 117 output channels likewise."""
    for graph, channels in ((depthwise_graph(14, 90, 9, 1), 90), (pointwise_graph(14, 61, 117), 117),
                            (pointwise_graph(7, 64, 100), 100)):
        text = "\n".join(_scheduled_kernels(graph, cpu_name).values())
        assert "T.where" not in text, (channels, text)
        expect = max(d for d in range(1, (16 if cpu_name == "cascadelake" else 8) + 1) if channels % d == 0)
        assert f"x {expect} channels" in text, (channels, text)
    assert "x {} channels".format(run) in "\n".join(_scheduled_kernels(depthwise_graph(14, 90, 9, 1), cpu_name).values())


@pytest.mark.structure
@pytest.mark.parametrize("triple,cpu,lanes,wide,registers", [
    ("x86_64-linux-gnu", "core-avx2", 8, 8, 16), ("x86_64-linux-gnu", "skylake-avx512", 8, 16, 32),
    ("x86_64-linux-gnu", "cascadelake", 8, 16, 32),
    ("aarch64-linux-gnu", "cortex-a72", 4, 4, 32), ("aarch64-linux-android", "cortex-a76", 4, 4, 32),
    ("armv7a-linux-gnueabihf", "cortex-a53", 4, 4, 16)])
def test_target_parameters(triple, cpu, lanes, wide, registers):
    """AVX-512 kernels vectorise for 256 bits (with its 32 registers) and take 512-bit vectors only
    where the channels fill them (measured, Large on a Sapphire Rapids host: 512 everywhere 7.50 ms,
    256 everywhere 4.49, 512 for 16k-channel pointwise and depthwise kernels 3.94)."""
    from mobilec.targets import resolve

    p = cpu_params(resolve(triple, cpu, num_cores=3).tvm_target())
    assert (p.lanes, p.registers, p.cores) == (lanes, registers, 3)
    assert p.for_channels(48).lanes == (wide if 48 % wide == 0 else lanes) and p.for_channels(24).lanes == lanes


@pytest.mark.structure
@pytest.mark.parametrize("lanes,registers", [(8, 16), (4, 32), (4, 16)])
def test_pointwise_tiles_fit_the_register_file_and_divide_the_axes(lanes, registers):
    from mobilec.schedules.kernels.pointwise import nchw_tiles

    cpu = CpuParams(lanes, registers, 2)
    for f, hw, k in itertools.product((16, 24, 40, 72, 120, 160, 672, 960), (7, 14, 28, 56, 112), (16, 96, 960)):
        score, orientation, tiles, _ = nchw_tiles(f, hw, hw, k, cpu, ihwo=True)
        _, rows, ytile, cols = tiles
        vec = cols
        assert vec in (lanes // 2, lanes, 2 * lanes, 4 * lanes), (f, hw, tiles)  # no odd-width vectors here
        if orientation == "nchw":
            assert f % rows == 0 and hw % ytile == 0 and hw % cols == 0
            assert rows * ytile * -(-cols // lanes) <= registers - 2
        else:
            assert hw % ytile == 0 and f % cols == 0
            assert ytile * (cols // lanes) <= registers - 2
        assert score > 0


@pytest.mark.structure
def test_pointwise_tiles_by_vector_element_keep_a_register_per_pixel():
    """AArch64 (fmla by element): each pixel of the tile holds a vector of input channels, so
    accumulators + input registers + weight vectors fit the register file."""
    from mobilec.schedules.kernels.pointwise import nhwc_tiles

    cpu = CpuParams(4, 32, 2, fma_by_lane=True)
    for f, hw, k in itertools.product((16, 24, 40, 72, 120, 160, 184, 672, 960), (7, 14, 28, 56, 112), (16, 96, 960)):
        score, rows, pixels, vectors = nhwc_tiles(hw, hw, f, k, cpu)
        assert score > 0 and hw % rows == 0 and hw % pixels == 0 and f % (vectors * cpu.lanes) == 0
        assert rows * pixels * (vectors + 1) + vectors <= cpu.registers, (f, hw, k, rows, pixels, vectors)


@pytest.mark.structure
@pytest.mark.parametrize("cpu_name", ["core-avx2", "cascadelake"])
def test_nhwc_pointwise_tiles_fit_the_register_file(cpu_name):
    """Broadcast tiles (x86): accumulators + weight vectors + the broadcast fit the register file;
    AVX-512's 32 registers take up to 6 vectors (a 40-channel kernel: 5 vectors x 4 pixels, not
    1 vector x 28 pixels; measured, Large: 4.59 -> 4.45 and 4.43 -> 4.26 ms in two interleaved runs),
    AVX2's 16 up to 4; channels that fill 512-bit vectors take them."""
    from mobilec.targets import resolve
    from mobilec.schedules.kernels.pointwise import nhwc_tiles

    base = cpu_params(resolve("x86_64-linux-gnu", cpu_name, 2).tvm_target())
    for f, hw, k in itertools.product((16, 24, 40, 72, 120, 160, 184, 200, 672, 960), (7, 14, 28, 56, 112), (16, 96, 960)):
        score, rows, pixels, vectors = nhwc_tiles(hw, hw, f, k, base)
        cpu = base.for_channels(f)
        assert score > 0 and hw % rows == 0 and hw % pixels == 0 and f % (vectors * cpu.lanes) == 0
        assert rows * pixels * vectors + vectors + 1 <= cpu.registers, (f, hw, k, rows, pixels, vectors)
        assert vectors <= (6 if cpu.registers == 32 else 4)
    assert nhwc_tiles(28, 28, 40, 72, base)[3] == (5 if cpu_name == "cascadelake" else 1)


# --------------------------------------------------------------------------------------------- host build

@pytest.mark.build
@pytest.mark.parametrize("name,kind,build", KERNELS, ids=[k[0] for k in KERNELS])
def test_each_kernel_kind_is_scheduled_and_matches_onnxruntime(name, kind, build, tmp_path):
    res = assert_matches_onnxruntime(build(), tmp_path)
    scheduled = res.manifest.default_schedules
    assert scheduled.get(kind, 0) >= 1, scheduled
    assert "unscheduled" not in scheduled, scheduled


@pytest.mark.build
def test_plain_lowering_still_available_and_equal(tmp_path):
    """``default_schedules=False`` (CLI --no-default-schedules) leaves every kernel to TVM."""
    res = assert_matches_onnxruntime(depthwise_graph(14, 8, 3, 1), tmp_path, default_schedules=False)
    assert res.manifest.default_schedules == {}


@pytest.mark.build
@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small", "lraspp_mobilenet_v3_small"])
def test_whole_models_leave_no_kernel_unscheduled(compiled, name):
    manifest = compiled(name).manifest
    scheduled = manifest.default_schedules
    assert "unscheduled" not in scheduled, scheduled
    for kind in ("pointwise", "depthwise", "direct"):
        assert scheduled.get(kind, 0) >= 1, scheduled
    if name.startswith("mobilenet"):
        assert scheduled.get("squeeze-excite", 0) >= 1 and scheduled.get("matmul", 0) >= 1, scheduled


@pytest.mark.build
@pytest.mark.parametrize("triple,cpu,by_lane", [("aarch64-linux-gnu", "cortex-a76", True),
                                                ("x86_64-linux-gnu", "core-avx2", False)])
def test_pointwise_multiplies_by_vector_element_where_the_isa_can(triple, cpu, by_lane):
    """AArch64's pointwise kernel loads a vector of input channels per pixel and multiplies by its
    lanes (``fmla v, v, v.s[i]``); AVX2 has no such form and keeps its broadcasts. (Numerics on the
    emulated device: test_emulator.py.)"""
    import re

    asm = assembly(pointwise_graph(7, 64, 32), triple, cpu)
    if by_lane:
        assert re.search(r"fmla\s+v\d+\.4s, v\d+\.4s, v\d+\.s\[[123]\]", asm)  # lanes past the first
    else:
        assert "vfmadd" in asm and "vbroadcastss" in asm


def _kernel(onnx_model, target, kind: str):
    """The one kernel of ``onnx_model`` whose TIR names ``kind``, as mobilec's pipeline lowers it,
    in a module of its own ("main")."""
    import tvm

    from mobilec.compiler.importer import import_onnx
    from mobilec.compiler.pipeline import PipelineOptions, run_until

    lowered = run_until(import_onnx(onnx_model).mod, target, PipelineOptions(), "lower")
    func = next(f for _, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and kind in f.script())
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def _run_kernel(sch, target, seed: int = 0):
    """Build one scheduled kernel as the tuning builder does and run it on seeded random inputs;
    the output (its last parameter)."""
    import tvm

    from mobilec.schedules.builder import as_candidate, build_candidate

    mod = as_candidate(sch.mod)
    lib = build_candidate(mod, target)
    rng = np.random.default_rng(seed)
    args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in p.ty.shape]).astype(str(p.ty.dtype)))
            for p in mod["main"].params]
    lib[lib.entry_name](*args)
    return args[-1].numpy()


@pytest.mark.build
@pytest.mark.parametrize("triple,cpu_name", [("x86_64-linux-gnu", "core-avx2"), ("aarch64-linux-gnu", "cortex-a55")])
def test_the_search_samples_how_far_the_reduction_loop_is_unrolled(triple, cpu_name):
    """The reduction loop of a pointwise kernel is split by a tile-size sample whose inner loop is
    unrolled: 1 in the default schedule (LLVM decides), up to 8 in the search (what an in-order
    core may want). On AArch64 it is the loop over vectors of input channels (``fma_by_lane``).
    A candidate that unrolls 4 steps computes the same sums in the same order: on the host, its
    output equals the default schedule's bit for bit."""
    from tvm.s_tir import Schedule

    from mobilec.targets import resolve
    from mobilec.schedules.defaults import decisions, default_schedule, pack_for_tiles, search_space
    from mobilec.schedules.loops import MAX_UNROLL

    target = resolve(triple, cpu_name, 2).tvm_target()
    cpu = cpu_params(target)
    mod = _kernel(pointwise_graph(14, 32, 64), target, "conv2d_nhwc")
    default = default_schedule(mod, cpu)[0]
    trace = default.trace
    unroll = [i for i in trace.insts if i.kind.name == "SamplePerfectTile"][-1]  # sampled after the tiles
    steps = 32 // cpu.lanes if cpu.fma_by_lane else 32
    assert decisions(trace)[-1] == [steps, 1] and int(unroll.attrs[1]) == MAX_UNROLL
    for space in search_space(Schedule(mod), cpu):  # every design space samples it too
        assert [i.kind.name for i in space.trace.insts].count("SamplePerfectTile") == len(decisions(trace))
    unrolled = Schedule(mod)
    trace.with_decision(unroll, [steps // 4, 4], remove_postproc=True).apply_to_schedule(unrolled, remove_postproc=False)
    pack_for_tiles(unrolled)
    assert decisions(unrolled.trace)[-1] == [steps // 4, 4]
    loops = [Counter((int(s.get(l).extent), int(s.get(l).kind)) for l in s.get_loops(s.get_sblock("conv2d_nhwc_update")))
             for s in (default, unrolled)]
    serial, unroll_kind = 0, 3  # tvm.tirx.ForKind
    assert loops[0] - loops[1] == Counter({(steps, serial): 1, (1, unroll_kind): 1}), loops
    assert loops[1] - loops[0] == Counter({(steps // 4, serial): 1, (4, unroll_kind): 1}), loops
    if triple.startswith("x86_64"):
        assert np.array_equal(_run_kernel(unrolled, target), _run_kernel(default, target))


@pytest.mark.build
def test_search_space_gives_the_pointwise_loop_order_a_design_space_per_side():
    """Which operand's tile loop is outermost (weights or map) is a choice MetaSchedule's traces
    cannot mutate: the search gets one design space per side, each with the same tile-size
    samples; a depthwise kernel, with no such choice, gets one space. The default schedule is
    the first space with the heuristic's decisions."""
    from tvm.s_tir import Schedule

    from mobilec.targets import resolve
    from mobilec.schedules.defaults import decisions, default_schedule, search_space

    target = resolve("host", None, 2).tvm_target()
    cpu = cpu_params(target)
    for build, kind, count in [(lambda: pointwise_graph(14, 32, 64), "conv2d_nhwc", 2),
                               (lambda: depthwise_graph(14, 24, 3, 1), "group_conv2d", 1)]:
        mod = _kernel(build(), target, kind)
        spaces = search_space(Schedule(mod), cpu)
        assert len(spaces) == count, kind
        seed = decisions(default_schedule(mod, cpu)[0].trace)
        assert seed and all(len(decisions(s.trace)) == len(seed) for s in spaces)
        if count == 2:  # the same loops, nested the other way
            loops = [[s.get(l).loop_var.name for l in s.get_loops(s.get_sblock("conv2d_nhwc_update"))]
                     for s in spaces]
            assert loops[0] != loops[1] and sorted(loops[0]) != sorted(loops[1]), loops


@pytest.mark.build
@pytest.mark.parametrize("cpu_name", ["core-avx2", "cascadelake"])
def test_input_transpose_loads_whole_vectors(cpu_name):
    """The network's NCHW -> NHWC input transpose (3 channels innermost in the output): vectors
    along the input's rows, the 3 channels unrolled around them, instead of a gather per vector
    (measured, 224x224x3: 61-66 -> 8 us on this host); the result is the transpose."""
    import tvm
    from tvm import te

    from mobilec.targets import resolve
    from mobilec.schedules.kernels import generic

    target = resolve("x86_64-linux-gnu", cpu_name, 2).tvm_target()
    cpu = cpu_params(target)
    a = te.placeholder((1, 3, 20, 32), name="A")
    out = te.compute((1, 20, 32, 3), lambda n, y, x, c: a[n, c, y, x], name="T_transpose")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, out]))
    generic.schedule(sch, cpu)
    loops = sch.get_loops(sch.get_sblock("T_transpose"))
    kinds = [sch.get(l).kind for l in loops]
    assert [int(sch.get(l).extent) for l in loops[-2:]] == [3, 2 * cpu.lanes]
    assert kinds[-1] == tvm.tirx.ForKind.VECTORIZED and kinds[-2] == tvm.tirx.ForKind.UNROLLED
    run_here_or_skip("x86_64", cpu_name, "the schedule's loops")
    lib = tvm.compile(sch.mod, target=target)
    x = np.random.default_rng(0).standard_normal((1, 3, 20, 32)).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros((1, 20, 32, 3), np.float32))
    lib(tvm.runtime.tensor(x), y)
    np.testing.assert_array_equal(y.numpy(), x.transpose(0, 2, 3, 1))


@pytest.mark.build
@pytest.mark.parametrize("channels", [120, 72, 16])
def test_channels_last_gate_vectorises_whole_channels(channels):
    """SE's gate on an NHWC map whose channel count is not a multiple of the fused plane's vector
    piece (120, 72, 16 channels): vectors of the channel axis alone, so the per-channel gate is one
    contiguous load rather than a gather across pixels (measured on MobileNetV3-Large's 28x28x120
    SE kernel: 104 -> 14 us per call); the values are x * gate."""
    import tvm
    from tvm import te

    from mobilec.targets import resolve
    from mobilec.schedules.kernels import generic

    target = resolve("x86_64-linux-gnu", "core-avx2", 2).tvm_target()
    cpu = cpu_params(target)
    x = te.placeholder((1, 28, 28, channels), name="X")
    s = te.placeholder((1, 1, 1, channels), name="S")
    out = te.compute(x.shape, lambda n, h, w, c: x[n, h, w, c] * te.max(te.min(s[0, 0, 0, c] / 6 + 0.5, 1.0), 0.0),
                     name="T_multiply")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, s, out]))
    generic.schedule(sch, cpu)
    loops = sch.get_loops(sch.get_sblock("T_multiply"))
    vector = int(sch.get(loops[-1]).extent)
    assert sch.get(loops[-1]).kind == tvm.tirx.ForKind.VECTORIZED and channels % vector == 0, vector
    assert sch.get(loops[0]).kind == tvm.tirx.ForKind.PARALLEL
    lib = tvm.compile(sch.mod, target=target)
    rng = np.random.default_rng(0)
    xs, ss = (rng.standard_normal(shape).astype(np.float32) for shape in ((1, 28, 28, channels), (1, 1, 1, channels)))
    y = tvm.runtime.tensor(np.zeros((1, 28, 28, channels), np.float32))
    lib(tvm.runtime.tensor(xs), tvm.runtime.tensor(ss), y)
    np.testing.assert_allclose(y.numpy(), xs * np.clip(ss / 6 + 0.5, 0, 1), rtol=1e-6, atol=1e-6)
