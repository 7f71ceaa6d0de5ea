"""Quantised (QDQ) ONNX compiled as integer kernels: each kernel kind against the QDQ file's own
semantics (onnxruntime with graph optimisations off), the forms other tools write, and what stays
float and why."""

import re

import onnx
import pytest
import tvm
from onnx import helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from helpers import assembly, run_here_or_skip, seeded_input
from graphs import C, HW, conv, hswish_nodes, model
from mobilec.compiler import CompileConfig, compile_model, inspect_model, resolve
from mobilec.targets import CPUS, TRIPLES, cpu_params, dot_form, runnable_here
from mobilec.frontends.quantize import QuantizeConfig, quantize_model
from quant import KINDS, assert_network_follows, assert_within_one_step, kernel, quantized
from mobilec.frontends.torch_int8 import export_pytorch_int8


@pytest.mark.build
@pytest.mark.parametrize("kind", KINDS)
def test_every_kernel_kind_matches_the_qdq_reference(kind, tmp_path):
    qdq = quantized(tmp_path, kernel(kind))
    res = compile_model(qdq, tmp_path / "k.so")
    assert res.report.float_quantized == []
    op = "matmul" if kind == "classifier" else "conv2d"
    # 1x1 convolutions and matrix products: the host's dot instruction (targets.INT_DOTS: AVX2's
    # 16-bit pairs, AVX-512 VNNI's byte quads); kxk: exact float32 FMAs
    cpu = cpu_params(resolve("host").target)
    form = dot_form(cpu.int_dot, C, C)
    if form is None:
        pytest.skip(f"this host's CPU ({resolve('host').cpu}) has no integer dot instruction: every kernel runs in float")
    dot = f"{form.what} ({cpu.int_dot})"
    how = dot if kind in ("pointwise", "residual", "hswish", "wide") else "exact in float32"  # 10 classes: not 8k
    want = {f"{op} ({how})": 2 if kind in ("hswish", "residual") else 1}
    if kind == "expand_depthwise":
        want = {f"{op} ({dot})": 1, f"{op} (exact in float32)": 1}
    assert res.report.int8 == want
    assert "unscheduled" not in res.manifest.default_schedules, res.manifest.default_schedules
    assert_within_one_step(res.library, qdq)


@pytest.mark.build
@pytest.mark.parametrize("kind, how", [("wide", "int32"), ("pointwise", "exact in float32")])
def test_without_the_pair_instruction(kind, how, tmp_path):
    """An x86-64 (SSE2) build has no 16-bit pair instruction: a reduction float32 cannot hold
    exactly runs in int32, the rest in float32."""
    qdq = quantized(tmp_path, kernel(kind))
    res = compile_model(qdq, tmp_path / "k.so", CompileConfig(target="x86_64-linux-gnu", cpu="x86-64"))
    assert res.report.int8 == {f"conv2d ({how})": 1}
    assert_within_one_step(res.library, qdq)


def _depthwise_input_dtype(qdq: str, target) -> dict:
    """{groups: the dtype each fused convolution kernel reads} after phase 2."""
    from mobilec.compiler.importer import import_onnx
    from mobilec.compiler.pipeline import PipelineOptions, run_until

    fused = run_until(import_onnx(qdq).mod, target, PipelineOptions(), "fuse")
    inputs = {}
    for gv, f in fused.functions.items():
        if isinstance(f, tvm.relax.Function) and "Composite" in (f.attrs or {}):
            convs = []
            tvm.relax.analysis.post_order_visit(f.body, lambda e: convs.append(e) if isinstance(e, tvm.relax.Call)
                                                and getattr(e.op, "name", "") == "relax.nn.conv2d" else None)
            inputs[int(convs[0].attrs.groups)] = str(f.params[0].ty.dtype)
    return inputs


@pytest.mark.build
@pytest.mark.parametrize("cpu", ["cascadelake", "core-avx2"])
def test_a_depthwise_reads_its_producers_float_values(cpu, tmp_path):
    """A float-exact depthwise whose input only it reads gets that input as float32 integers from
    the producing kernel's epilogue, not as 8 bits it converts at each of its 9 taps. The expansion
    reads what its dot instruction takes (targets.INT_DOTS): the model's 8 bits as uint8 for
    vpdpbusd, less their zero point as int16 for vpmaddwd. Built only (no run): any x86 host."""
    qdq = quantized(tmp_path, kernel("expand_depthwise"))
    target = resolve("x86_64-linux-gnu", cpu).tvm_target()
    inputs = _depthwise_input_dtype(qdq, target)
    assert inputs == {1: dot_form(cpu_params(target).int_dot, C, C).data_dtype, C: "float32"}, inputs


@pytest.mark.build
@pytest.mark.parametrize("triple, cpu, hw, dtype", [
    ("x86_64-linux-gnu", "cascadelake", 184, "uint8"),  # 8 x 184 x 184 floats: 1,083,392 bytes, 1 MB L2
    ("aarch64-linux-gnu", "cortex-a55", 64, "float32"),  # 131,072 bytes: the 128 KB L2 exactly
    ("aarch64-linux-gnu", "cortex-a55", 66, "uint8"),
    ("aarch64-linux-gnu", "cortex-a76", 66, "float32"),  # 256 KB
])
def test_a_float_copy_larger_than_the_cache_stays_8_bit(triple, cpu, hw, dtype, tmp_path):
    """The float hand-over only where the float32 copy fits in the core's L2 (``CpuPreset.l2_kb``):
    a larger one goes to memory and back at four times the bytes (Large's 112x112x64 expansion on
    AVX-512: it and its depthwise 143-179 -> 122-125 us)."""
    a, ai = conv("input", "a", k=1)
    n, i = conv("r", "c", k=3, group=C, seed=1)
    relu = [helper.make_node("Relu", [x], [y]) for x, y in (("a", "r"), ("c", "output"))]
    proto = model(a + relu[:1] + n + relu[1:], ai + i, inputs=(("input", (1, C, hw, hw)),),
                  output=("output", (1, C, hw, hw)))
    qdq = quantized(tmp_path, proto)
    assert _depthwise_input_dtype(qdq, resolve(triple, cpu).tvm_target())[C] == dtype


@pytest.mark.build
@pytest.mark.parametrize("cin, cout, form", [(C, C, "ymm"), (64, 32, "zmm")])
@pytest.mark.parametrize("signed", [True, False])
def test_avx512_vnni_pointwise(cin, cout, form, signed, tmp_path):
    """AVX-512 VNNI's uint8 x int8 quads: the 512-bit form where the output channels are a multiple
    of 16, the 256-bit one where they are of 8; an int8 input is read as x + 128. Built for the
    cascadelake preset on any x86 host; run (and compared) where this CPU has VNNI."""
    n, i = conv("input", "output", cin=cin, cout=cout, k=1)
    src, qdq = tmp_path / "m.onnx", tmp_path / "m-int8.onnx"
    onnx.save(model(n, i, inputs=(("input", (1, cin, 6, 6)),), output=("output", (1, cout, 6, 6))), src)
    quantize_static(str(src), str(qdq), _Reader((1, cin, 6, 6)), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8 if signed else QuantType.QUInt8)
    config = CompileConfig(target="x86_64-linux-gnu", cpu="cascadelake")
    res = compile_model(str(qdq), tmp_path / "k.so", config)
    assert res.report.int8 == {"conv2d (uint8 x int8 dot (vpdpbusd))": 1}
    asm = assembly(str(qdq), "x86_64-linux-gnu", "cascadelake")
    assert re.search(rf"vpdpbusd\s[^\n]*%{form}", asm) and "vpmaddwd" not in asm
    run_here_or_skip("x86_64", "cascadelake", "the build and its assembly")
    assert_within_one_step(res.library, str(qdq))


@pytest.mark.build
@pytest.mark.parametrize("cin, cout", [(C, C), (64, 32)])
def test_avx_vnni_pointwise(cin, cout, tmp_path):
    """AVX-VNNI (no AVX-512): vpdpbusd's 256-bit form, VEX-encoded, for every channel count a
    multiple of 8. Built for the avx2-vnni preset on any x86 host; run where this CPU has AVX-VNNI."""
    n, i = conv("input", "output", cin=cin, cout=cout, k=1)
    src, qdq = tmp_path / "m.onnx", tmp_path / "m-int8.onnx"
    onnx.save(model(n, i, inputs=(("input", (1, cin, 6, 6)),), output=("output", (1, cout, 6, 6))), src)
    quantize_model(src, qdq, QuantizeConfig(random=4, held_out=1))
    res = compile_model(str(qdq), tmp_path / "k.so", CompileConfig(target="x86_64-linux-gnu", cpu="avx2-vnni"))
    assert res.report.int8 == {"conv2d (uint8 x int8 dot (avx-vnni))": 1}
    asm = assembly(str(qdq), "x86_64-linux-gnu", "avx2-vnni")
    assert re.search(r"vpdpbusd\s[^\n]*%ymm", asm) and "%zmm" not in asm and "vpmaddwd" not in asm
    run_here_or_skip("x86_64", "avx2-vnni", "the build and its assembly")
    assert_within_one_step(res.library, str(qdq))


@pytest.mark.build
@pytest.mark.parametrize("cin, lanes", [(32, [0, 1, 2, 3]), (C, [0, 1]), (12, [])])
def test_sdot_reads_the_input_by_element(cin, lanes, tmp_path):
    """AArch64 int8 1x1 kernels load an input pixel's 4 (or 2) quads of channels once and read each
    as a lane of sdot's by-element form, not one ld1r broadcast per quad (on Cortex-A76 ld1r also
    takes a vector-pipe slot: llvm-mca 21 -> 32 multiply-adds a cycle); input channels that are no
    multiple of 8 keep the quad form. Assembly only (values: test_emulator.py)."""
    n, i = conv("input", "output", cin=cin, cout=8, k=1)
    src = tmp_path / "m.onnx"
    onnx.save(model(n, i, inputs=(("input", (1, cin, 6, 6)),), output=("output", (1, 8, 6, 6))), src)
    qdq = tmp_path / "m-int8.onnx"
    quantize_model(src, qdq, QuantizeConfig(random=4, held_out=1))
    asm = assembly(str(qdq), "aarch64-linux-gnu", "cortex-a76")
    by_element = {int(i) for i in re.findall(r"sdot\s+v\d+\.4s, v\d+\.16b, v\d+\.4b\[(\d)\]", asm)}
    assert sorted(by_element) == lanes, by_element
    assert bool(re.search(r"sdot\s+v\d+\.4s, v\d+\.16b, v\d+\.16b", asm)) == (not lanes)


@pytest.mark.build
def test_float_epilogues_join_the_integer_kernel(tmp_path):
    report = inspect_model(quantized(tmp_path, kernel("hswish"))).report
    assert report.matched == {"mobilec.conv2d_requantize_hswish": 1, "mobilec.conv2d_requantize": 1}, \
        report.to_dict()
    report = inspect_model(quantized(tmp_path, kernel("residual"), "r")).report
    assert report.matched == {"mobilec.conv2d_requantize_residual": 1, "mobilec.conv2d_requantize": 1}, \
        report.to_dict()


class _Reader(CalibrationDataReader):
    def __init__(self, shape):
        self._it = iter([{"input": seeded_input(shape, s)} for s in range(4)])

    def get_next(self):
        return next(self._it, None)


def ort_quantized(tmp_path, proto, **options) -> str:
    """The file onnxruntime's own tool writes (its defaults, or the options given)."""
    src, dst = tmp_path / "src.onnx", tmp_path / "ort-int8.onnx"
    onnx.save(proto, src)
    quantize_static(str(src), str(dst), _Reader((1, C, HW, HW)), quant_format=QuantFormat.QDQ, **options)
    return str(dst)


def two_layers() -> onnx.ModelProto:
    """pointwise, then depthwise, then h-swish"""
    a, ai = conv("input", "a", k=1)
    b, bi = conv("a", "b", group=C, seed=1)
    h, hi = hswish_nodes("b", "output", "onnx")
    return model(a + b + h, ai + bi + hi)


@pytest.mark.build
@pytest.mark.parametrize("form", ["ort-default", "per-tensor", "asymmetric-weights"])
def test_other_quantisers_files(form, tmp_path):
    options = {"ort-default": {}, "per-tensor": {"per_channel": False},
               "asymmetric-weights": {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QUInt8,
                                      "per_channel": True, "extra_options": {"WeightSymmetric": False}}}[form]
    qdq = ort_quantized(tmp_path, two_layers(), **options)
    res = compile_model(qdq, tmp_path / "o.so")
    assert sum(res.report.int8.values()) == 2 and res.report.float_quantized == []
    assert_within_one_step(res.library, qdq)


@pytest.mark.build
@pytest.mark.parametrize("form, reason", [("uint16-activations", "quantised to uint16"),
                                          ("int16-weights", "weights are int16")])
def test_16_bit_runs_in_float_and_says_why(form, reason, tmp_path):
    options = {"uint16-activations": {"activation_type": QuantType.QUInt16, "per_channel": True},
               "int16-weights": {"weight_type": QuantType.QInt16, "per_channel": True}}[form]
    qdq = ort_quantized(tmp_path, two_layers(), **options)
    res = compile_model(qdq, tmp_path / "f.so")
    assert res.report.int8 == {}
    assert len(res.report.float_quantized) == 2
    assert all(reason in r["reason"] and r["op"].startswith("nn.conv2d") for r in res.report.float_quantized)
    assert_within_one_step(res.library, qdq)


@pytest.mark.build
def test_registry_model_int8(exported, tmp_path):
    """MobileNetV3-Small quantised by mobilec: every convolution and the classifier integer. With the
    registry's random weights one rounding tie in a float op (h-swish, pooling) can move later
    layers, so the whole network is compared by agreement, not per element."""
    qdq = tmp_path / "small-int8.onnx"
    quantize_model(exported("mobilenet_v3_small"), qdq, QuantizeConfig(random=4, held_out=2))
    res = compile_model(qdq, tmp_path / "small-int8.so")
    assert res.report.float_quantized == []
    # 52 convolutions and 2 classifier layers, less the 9 SE blocks' 18 FCs, which stay float
    assert sum(res.report.int8.values()) == 36
    assert res.report.matched.get("mobilec.se") == 9, res.report.matched  # as in fp32: one kernel each
    assert res.report.matched.get("mobilec.conv2d_requantize_hswish", 0) > 0
    assert_network_follows(res.library, qdq, (1, 3, 224, 224))


@pytest.mark.build
def test_pytorch_quantised_export(tmp_path):
    """Every convolution and the classifier of PyTorch's own int8 MobileNetV3-Small (FX graph mode,
    the "x86" backend's per-channel weights, which reach -128; the TorchScript exporter's form) run
    as integer kernels, its squeeze-and-excite FCs too (PyTorch quantises them), the h-swish and
    h-sigmoid fused, and the output follows the file's QDQ semantics."""
    qdq = export_pytorch_int8("mobilenet_v3_small", tmp_path / "small-pytorch-int8.onnx", input_size=112)
    convs = sum(n.op_type in ("Conv", "Gemm") for n in onnx.load(str(qdq)).graph.node)
    res = compile_model(str(qdq), tmp_path / "small-pytorch-int8.so")
    assert res.report.float_quantized == []
    assert sum(res.report.int8.values()) == convs == 54, res.report.int8
    assert res.report.matched.get("mobilec.conv2d_requantize_hswish", 0) > 0
    assert res.report.matched.get("mobilec.hsigmoid") == 9, res.report.matched
    assert_network_follows(res.library, qdq, (1, 3, 112, 112))


def set_weights_to_minus_128(qdq: str, *where: tuple[int, int]) -> None:
    """Rewrite the QDQ file's int8 convolution weights at (output channel, input channel) ``where``."""
    proto = onnx.load(qdq)
    weight = next(t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4)
    w = onnx.numpy_helper.to_array(weight).copy()
    for out, inp in where:
        w[out, inp] = -128
    weight.CopyFrom(onnx.numpy_helper.from_array(w, weight.name))
    onnx.save(proto, qdq)


@pytest.mark.build
def test_a_weight_of_minus_128_takes_the_dot_instruction(tmp_path):
    """Symmetric int8 weights span -128..127 (PyTorch's per-channel observer reaches -128): they fit
    the 8-bit operand of vpdpbusd and sdot as they are."""
    qdq = quantized(tmp_path, model(*conv("input", "output", cin=C, cout=C, k=1)))
    set_weights_to_minus_128(qdq, (0, 0))
    for triple, cpu, kind in (("x86_64-linux-gnu", "cascadelake", "uint8 x int8 dot (vpdpbusd)"),
                              ("aarch64-linux-gnu", "cortex-a76", "int8 dot (sdot)"),
                              ("aarch64-linux-gnu", "cortex-a72", "int8 pairs (smull)"),
                              ("x86_64-linux-gnu", "core-avx2", "int16 pairs (vpmaddwd)")):
        res = compile_model(str(qdq), tmp_path / f"{cpu}.so", CompileConfig(target=triple, cpu=cpu))
        assert res.report.int8 == {f"conv2d ({kind})": 1}, (cpu, res.report.int8)
        if CPUS[(TRIPLES[triple].arch, cpu)] in runnable_here(TRIPLES[triple].arch):  # built for all, run where it can
            assert_within_one_step(res.library, str(qdq))


@pytest.mark.build
@pytest.mark.parametrize("cpu", ["cortex-a72", "cortex-a73"])
def test_widening_kernels_where_arm_has_no_dot_product(cpu, tmp_path):
    """AArch64 without the dot product (A72, A73): 1x1 kernels multiply int8 into int16 (smull,
    smlal) and add the int16 lanes' pairs into int32 (sadalp). A lane sums two products, of weights
    k and k + 2: two weights of -128 there would pass int16, so that layer takes the exact float32
    path, as every layer does on A53 (its preset has no int_dot). (Run on the emulated device:
    tests/test_emulator.py.)"""
    qdq = quantized(tmp_path, model(*conv("input", "output", cin=C, cout=C, k=1)))
    config = CompileConfig(target="aarch64-linux-gnu", cpu=cpu)
    res = compile_model(str(qdq), tmp_path / "k.so", config)
    assert res.report.int8 == {"conv2d (int8 pairs (smull))": 1}
    asm = assembly(str(qdq), "aarch64-linux-gnu", cpu)
    steps = [len(re.findall(rf"\s{ins}\s", asm)) for ins in ("smull", "smlal", "sadalp")]
    assert steps[0] > 0 and steps[0] == steps[1] == steps[2], steps
    a53 = CompileConfig(target="aarch64-linux-gnu", cpu="cortex-a53")
    assert compile_model(str(qdq), tmp_path / "a53.so", a53).report.int8 == {"conv2d (exact in float32)": 1}
    set_weights_to_minus_128(qdq, (0, 0), (0, 2))  # output channel 0, input channels 0 and 2: one int16 lane
    assert compile_model(str(qdq), tmp_path / "f.so", config).report.int8 == {"conv2d (exact in float32)": 1}


@pytest.mark.build
def test_no_integer_flag_keeps_the_file_in_float(tmp_path):
    qdq = quantized(tmp_path, kernel("pointwise"))
    res = compile_model(qdq, tmp_path / "f.so", CompileConfig(integer=False))
    assert res.report.int8 == {}
    assert_within_one_step(res.library, qdq)
