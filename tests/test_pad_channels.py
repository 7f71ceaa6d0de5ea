"""Hidden channel counts padded to whole AVX-512 vectors (compiler/pad_channels.py): which groups
are padded, and the padded network's values."""

import re

import numpy as np
import pytest
from onnx import helper

from helpers import onnxruntime_outputs, run_here_or_skip, seeded_input
from graphs import assert_matches_onnxruntime, chain, conv, hswish_nodes, model


def _block(hidden=72):
    """An inverted residual with SE: 24 -> ``hidden`` (ReLU), depthwise 3x3 (h-swish), SE with a
    hard-sigmoid gate, projection back to 24, the input added."""
    n, i = chain(
        conv("input", "e", 24, hidden, k=1), ([helper.make_node("Relu", ["e"], ["er"])], []),
        conv("er", "d", hidden, hidden, k=3, group=hidden, seed=1), hswish_nodes("d", "dh", "onnx"),
        ([helper.make_node("GlobalAveragePool", ["dh"], ["pool"])], []),
        conv("pool", "fc1", hidden, 24, k=1, seed=2), ([helper.make_node("Relu", ["fc1"], ["r"])], []),
        conv("r", "fc2", 24, hidden, k=1, seed=3),
        ([helper.make_node("HardSigmoid", ["fc2"], ["gate"], alpha=1 / 6, beta=0.5),
          helper.make_node("Mul", ["dh", "gate"], ["g"])], []),
        conv("g", "p", hidden, 24, k=1, seed=4), ([helper.make_node("Add", ["input", "p"], ["output"])], []))
    return model(n, i, inputs=[("input", (1, 24, 14, 14))], output=("output", (1, 24, 14, 14)))


def _leaking():
    """72 channels added to the 72-channel input: the group reaches a tensor it cannot pad."""
    n, i = chain(conv("input", "e", 72, 72, k=1), ([helper.make_node("Relu", ["e"], ["er"]),
                                                     helper.make_node("Add", ["input", "er"], ["output"])], []))
    return model(n, i, inputs=[("input", (1, 72, 14, 14))], output=("output", (1, 72, 14, 14)))


def _concatenated():
    """72 channels concatenated with the input (concat reads them inside its tuple argument): the
    output has 96 channels, whatever the group's width inside."""
    n, i = chain(conv("input", "e", 24, 72, k=1), ([helper.make_node("Relu", ["e"], ["er"]),
                                                    helper.make_node("Concat", ["er", "input"], ["output"], axis=1)], []))
    return model(n, i, inputs=[("input", (1, 24, 14, 14))], output=("output", (1, 96, 14, 14)))


def _grouped():
    """72 channels read by a convolution of 2 groups: padding its input would shift the groups."""
    n, i = chain(conv("input", "e", 24, 72, k=1), conv("e", "output", 72, 24, k=1, group=2, seed=1))
    return model(n, i, inputs=[("input", (1, 24, 14, 14))], output=("output", (1, 24, 14, 14)))


def _canonical(proto, cpu: str):
    from mobilec.compiler.importer import import_onnx
    from mobilec.compiler.pipeline import PipelineOptions, run_until
    from mobilec.targets import resolve

    target = resolve("x86_64-linux-gnu", cpu, 2).tvm_target()
    return run_until(import_onnx(proto).mod, target, PipelineOptions(), "canonicalize")


def _channels(mod) -> set[int]:
    """The channel counts of the NHWC tensors the graph computes (the NCHW input left out)."""
    bound = [line for line in mod["main"].script().splitlines() if "= R." in line and "permute_dims" not in line]
    return {int(c) for line in bound for c in re.findall(r"R\.Tensor\(\(\d+, \d+, \d+, (\d+)\), dtype", line)}


@pytest.mark.build
def test_a_blocks_hidden_channels_are_padded_on_avx512_only():
    """72 -> 80 through expansion, depthwise, SE (FC2's output joins through the gate) up to the
    projection, which reads 80 channels; the block's own 24 channels (a residual) stay; AVX2, whose
    vectors divide 72, gets the graph as it was."""
    assert _channels(_canonical(_block(), "cascadelake")) == {24, 80}
    assert _channels(_canonical(_block(), "core-avx2")) == {24, 72}
    assert _channels(_canonical(_block(hidden=40), "cascadelake")) == {24, 40}  # 48 would add a fifth
    assert _channels(_canonical(_leaking(), "cascadelake")) == {72}
    assert _channels(_canonical(_grouped(), "cascadelake")) == {24, 72}
    assert _channels(_canonical(_concatenated(), "cascadelake")) == {72, 96}  # was {80, 104}: a wrong output


@pytest.mark.build
def test_padded_block_computes_the_same_values():
    """The padded graph, built by TVM's own pipeline for any x86 CPU, equals onnxruntime on the
    unpadded model."""
    import tvm
    from tvm import relax

    proto = _block()
    mod = _canonical(proto, "cascadelake")
    assert 80 in _channels(mod)
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    x = seeded_input((1, 24, 14, 14)) * 4
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = onnxruntime_outputs(proto.SerializeToString(), {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.build
def test_padded_block_on_the_avx512_preset(tmp_path):
    """Through mobilec's whole build for the cascadelake preset; run where the CPU has AVX-512."""
    from mobilec.compiler import CompileConfig, compile_model

    res = compile_model(_block(), tmp_path / "m.so", CompileConfig(target="x86_64-linux-gnu", cpu="cascadelake"))
    assert res.library.exists()
    run_here_or_skip("x86_64", "cascadelake", "the build")
    assert_matches_onnxruntime(_block(), tmp_path, target="x86_64-linux-gnu", cpu="cascadelake")


@pytest.mark.build
def test_a_quantised_block_is_padded_and_computes_the_same_values(tmp_path):
    """An int8 (QDQ) block's hidden channels pad the same way: its integer accumulators, 8-bit
    tensors, requantisation and (de)quantisations are channel-wise; padded channels hold the zero
    point, which their zero weight rows drop. The 80-channel kernels take VNNI's 512-bit form.
    Values within one output step of the QDQ reference, where this CPU has the preset's VNNI."""
    import onnx

    from mobilec.compiler import CompileConfig, compile_model
    from mobilec.frontends.quantize import QuantizeConfig, quantize_model
    from quant import assert_within_one_step

    src, qdq = tmp_path / "b.onnx", tmp_path / "b-int8.onnx"
    onnx.save(_block(), src)
    quantize_model(src, qdq, QuantizeConfig(random=4, held_out=1))
    int32 = lambda mod: {int(c) for c in re.findall(r'R\.Tensor\(\(1, \d+, \d+, (\d+)\), dtype="int32"',  # noqa: E731
                                                    mod["main"].script())}
    assert int32(_canonical(onnx.load(qdq), "cascadelake")) == {24, 80}
    assert int32(_canonical(onnx.load(qdq), "core-avx2")) == {24, 72}
    res = compile_model(str(qdq), tmp_path / "b.so", CompileConfig(target="x86_64-linux-gnu", cpu="cascadelake"))
    run_here_or_skip("x86_64", "cascadelake", "the padding and the build")
    assert_within_one_step(res.library, str(qdq))
