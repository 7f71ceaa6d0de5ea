"""End to end on an emulated aarch64 device: compile for aarch64-linux-gnu, run through the tracker
on TVM's RPC server under qemu, compare with onnxruntime on the host."""

import numpy as np
import pytest

import mobilec.runtime as mr
from helpers import emulator_or_skip, onnxruntime_outputs, seeded_input
from mobilec.compiler import CompileConfig, compile_model
from mobilec.rpc import emulate, local

pytestmark = [pytest.mark.rpc, pytest.mark.emulator]


@pytest.fixture(scope="module")
def emulated():
    """A tracker with the emulated device registered (the root filesystem is built once and cached)."""
    emulator_or_skip()
    with local.tracker() as tracker, emulate.device(tracker, "emu-aarch64"):
        yield tracker


def test_model_on_the_emulated_device_matches_onnxruntime(emulated, exported, tmp_path):
    onnx_path = exported("mobilenet_v3_small_035")
    res = compile_model(onnx_path, tmp_path / "arm.so", CompileConfig(target="aarch64-linux-gnu", cpu="cortex-a76"))
    remote = mr.connect(tracker=emulated, key="emu-aarch64", timeout=120)
    m = remote.load(res.library)
    x = seeded_input((1, 3, 224, 224))
    want = onnxruntime_outputs(onnx_path, {"input": x})[0]
    got = m(x)
    assert float(np.abs(got - want).max()) <= 1e-4 * float(np.abs(want).max())
    assert m.benchmark(warmup=0, repeat=1)["median_ms"] > 0  # timed on the device


def test_default_schedules_on_the_emulated_device_match_onnxruntime(emulated, tmp_path):
    """Every default schedule kind with NEON parameters (4 lanes, 32 registers), run on the device."""
    from graphs import kernel_zoo

    proto = kernel_zoo()
    res = compile_model(proto, tmp_path / "zoo.so", CompileConfig(target="aarch64-linux-gnu", cpu="cortex-a72"))
    assert {"direct", "depthwise", "pointwise", "squeeze-excite"} <= set(res.manifest.default_schedules)
    assert "unscheduled" not in res.manifest.default_schedules
    m = mr.connect(tracker=emulated, key="emu-aarch64", timeout=120).load(res.library)
    x = seeded_input((1, 3, 56, 56)) * 4
    want = onnxruntime_outputs(proto.SerializeToString(), {"input": x})[0]
    assert float(np.abs(m(x) - want).max()) <= 1e-4 * float(np.abs(want).max())


def test_newer_kernel_kinds_on_the_emulated_device_match_onnxruntime(emulated, tmp_path):
    """SiLU and sigmoid as polynomials, a deep full conv, a depthwise over 18 channels (no whole
    NEON vector divides it), SE with SiLU, softmax: on the device, with Cortex-A55's parameters."""
    from graphs import newer_kinds

    proto = newer_kinds()
    res = compile_model(proto, tmp_path / "newer.so", CompileConfig(target="aarch64-linux-gnu", cpu="cortex-a55"))
    assert "unscheduled" not in res.manifest.default_schedules
    m = mr.connect(tracker=emulated, key="emu-aarch64", timeout=120).load(res.library)
    x = seeded_input((1, 3, 32, 32)) * 4
    want = onnxruntime_outputs(proto.SerializeToString(), {"input": x})[0]
    assert float(np.abs(m(x) - want).max()) <= 1e-4 * float(np.abs(want).max())


def test_missing_rootfs_is_a_clear_error(tmp_path):
    with pytest.raises(emulate.EmulatorError, match="mobilec rpc emulate --build-only"):
        emulate.server_command(emulate.EmulatorConfig(cache=str(tmp_path)), "127.0.0.1:9190", "k")


def test_int8_kernels_on_the_emulated_device_match_the_qdq_reference(emulated, tmp_path):
    """Every int8 kernel kind (test_quantized.KINDS), built for Cortex-A76 and A55 (1x1 kernels on
    sdot) and A72 (no dot product: 1x1 kernels on the widening smull/smlal/sadalp, the rest exact
    float32 or int32), run on the device, against the QDQ file's own semantics within one output
    step."""
    from quant import KINDS, kernel, quantized
    from mobilec.frontends.quantize import output_step, reference_session

    remote = mr.connect(tracker=emulated, key="emu-aarch64", timeout=120)
    ways = set()
    for i, kind in enumerate(KINDS):
        qdq = quantized(tmp_path, kernel(kind), kind)
        cpu = ("cortex-a76", "cortex-a55", "cortex-a72")[i % 3]
        res = compile_model(qdq, tmp_path / f"{kind}.so", CompileConfig(target="aarch64-linux-gnu", cpu=cpu))
        assert res.report.float_quantized == [] and res.report.int8, kind
        assert "unscheduled" not in res.manifest.default_schedules, (kind, cpu)
        ways |= {(cpu, how) for how in res.report.int8}
        sess = reference_session(qdq)
        spec = sess.get_inputs()[0]
        x = seeded_input(spec.shape)
        want = sess.run(None, {spec.name: x})[0]
        got = remote.load(res.library)(x)
        assert float(np.abs(got - want).max()) <= output_step(qdq) * 1.001, (kind, cpu)
    assert ("cortex-a76", "conv2d (int8 dot (sdot))") in ways and ("cortex-a55", "conv2d (int8 dot (sdot))") in ways
    assert not any("sdot" in how for cpu, how in ways if cpu == "cortex-a72"), ways
    assert ("cortex-a72", "conv2d (int8 pairs (smull))") in ways, ways


def test_adapt_measures_its_table_and_a_step_on_the_emulated_device(emulated, tmp_path):
    """`mobilec adapt` over RPC: the layers compiled for aarch64, timed on the device, one NetAdapt
    step, the networks timed there too (the emulator's times say nothing of a phone's)."""
    import json

    from mobilec.adapt import AdaptConfig, Device, adapt

    device = Device(target="aarch64-linux-gnu", cpu="cortex-a55", tracker=emulated, key="emu-aarch64")
    cfg = AdaptConfig(device=device, budget=0.99, delta=0.01, synthetic=64, steps=1, pretrain=5, final_steps=0,
                      input_size=64, resolution=32, max_steps=1, extra_steps=0, table=str(tmp_path / "table.json"))
    res = adapt("mobilenet_v3_small_035", tmp_path / "out", cfg)
    assert [s["step"] for s in res.steps] == [0, 1] and res.steps[1]["proposals"]
    assert all(s["measured_ms"] > 0 and s["predicted_ms"] > 0 for s in res.steps)
    table = json.loads((tmp_path / "table.json").read_text())["devices"]
    assert list(table) == ["aarch64-linux-gnu cortex-a55 rpc:emu-aarch64 threads=default"]
    assert res.table_measured == len(table[device.table_key()]) > 10
