"""Tiny ONNX graphs written by the tests themselves, in the forms other exporters produce."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from helpers import onnxruntime_outputs, seeded_input

C, HW = 8, 10


def const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def model(nodes, inits, inputs=(("input", (1, C, HW, HW)),), output=("output", (1, C, HW, HW)), opset=17) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs],
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def chain(*parts):
    """(nodes, initializers) of several (nodes, initializers) parts, in order."""
    nodes, inits = [], []
    for n, i in parts:
        nodes += n
        inits += i
    return nodes, inits


def conv(x: str, out: str, cin: int = C, cout: int = C, k: int = 3, seed: int = 0, group: int = 1,
         stride: int = 1, bias: bool = True):
    """Conv ("same" padding, optional bias); returns (nodes, initializers)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin // group, k, k)).astype(np.float32) / np.sqrt(cin * k * k / group)
    inits, ins = [const(f"{out}_w", w)], [x, f"{out}_w"]
    if bias:
        inits.append(const(f"{out}_b", rng.standard_normal(cout)))
        ins.append(f"{out}_b")
    return [helper.make_node("Conv", ins, [out], pads=[k // 2] * 4, strides=[stride] * 2, group=group)], inits


def hswish_nodes(x: str, out: str, form: str, add=3.0, lo=0.0, hi=6.0, div=6.0):
    """h-swish of ``x`` written the way one exporter or another writes it."""
    p = f"{out}_"
    inits = [const(p + "three", add), const(p + "lo", lo), const(p + "hi", hi), const(p + "six", div),
             const(p + "sixth", 1.0 / div), const(p + "zero", 0.0)]
    relu6 = {
        "clip": [helper.make_node("Clip", [p + "a", p + "lo", p + "hi"], [p + "r"])],
        "minmax": [helper.make_node("Max", [p + "a", p + "lo"], [p + "m"]),
                   helper.make_node("Min", [p + "m", p + "hi"], [p + "r"])],
        "relu_min": [helper.make_node("Relu", [p + "a"], [p + "m"]),
                     helper.make_node("Min", [p + "m", p + "hi"], [p + "r"])],
    }
    add3 = [helper.make_node("Add", [x, p + "three"], [p + "a"])]
    if form == "onnx":
        return [helper.make_node("HardSwish", [x], [out])], []
    if form == "hardsigmoid":  # x * HardSigmoid(x): Keras / tf2onnx
        return [helper.make_node("HardSigmoid", [x], [p + "g"], alpha=1.0 / div, beta=add / div),
                helper.make_node("Mul", [x, p + "g"], [out])], []
    clip_form, scale = form.split("/")  # e.g. "clip/div", "minmax/mul", "relu_min/div_first"
    nodes = add3 + relu6[clip_form]
    if scale == "div":      # (x * relu6(x + 3)) / 6
        nodes += [helper.make_node("Mul", [x, p + "r"], [p + "xr"]), helper.make_node("Div", [p + "xr", p + "six"], [out])]
    elif scale == "mul":    # (x * relu6(x + 3)) * (1/6)
        nodes += [helper.make_node("Mul", [x, p + "r"], [p + "xr"]), helper.make_node("Mul", [p + "xr", p + "sixth"], [out])]
    elif scale == "div_first":  # x * (relu6(x + 3) / 6)
        nodes += [helper.make_node("Div", [p + "r", p + "six"], [p + "g"]), helper.make_node("Mul", [x, p + "g"], [out])]
    return nodes, inits


def hsigmoid_nodes(x: str, out: str, form: str, add=3.0, hi=6.0, div=6.0):
    p = f"{out}_"
    if form == "onnx":
        return [helper.make_node("HardSigmoid", [x], [out], alpha=1.0 / div, beta=add / div)], []
    inits = [const(p + "three", add), const(p + "lo", 0.0), const(p + "hi", hi), const(p + "six", div)]
    nodes = [helper.make_node("Add", [x, p + "three"], [p + "a"]),
             helper.make_node("Clip", [p + "a", p + "lo", p + "hi"], [p + "r"]),
             helper.make_node("Div", [p + "r", p + "six"], [out])]
    return nodes, inits


def assert_matches_onnxruntime(proto: onnx.ModelProto, tmp_path, rtol: float = 1e-4, **compile_kwargs):
    """Compile for the host, run with mobilec.runtime, compare with onnxruntime (seeded input)."""
    import mobilec.runtime as mr
    from mobilec.compiler import CompileConfig, compile_model

    res = compile_model(proto, tmp_path / "m.so", CompileConfig(**compile_kwargs))
    module = mr.load(res.library)
    feeds = {i["name"]: seeded_input(i["shape"]) * 4 for i in module.inputs}  # spans both h-swish knees
    want = onnxruntime_outputs(proto.SerializeToString(), feeds)[0]
    got = module.run(feeds)[0]
    scale = max(float(np.abs(want).max()), 1e-6)
    assert float(np.abs(got - want).max()) <= rtol * scale, (np.abs(got - want).max(), scale)
    return res


# kernels of each kind, alone and together

def tiny():
    """A pointwise-then-depthwise pair: two convolution tasks."""
    n1, i1 = conv("input", "c1", k=1)
    n2, i2 = conv("c1", "output", group=C, seed=1)
    return model(n1 + n2, i1 + i2)


def pointwise_graph(hw, cin, cout, bias=True):
    n, i = conv("input", "output", cin, cout, k=1, bias=bias)
    return model(n, i, inputs=[("input", (1, cin, hw, hw))], output=("output", (1, cout, hw, hw)))


def depthwise_graph(hw, c, k, stride):
    n, i = chain(conv("input", "dw", c, c, k=k, stride=stride, group=c),
                 hswish_nodes("dw", "output", "clip/div"))
    out = (hw + stride - 1) // stride
    return model(n, i, inputs=[("input", (1, c, hw, hw))], output=("output", (1, c, out, out)))


def kernel_zoo():
    """Every kind above in one graph (for the emulated device): stem -> dw s2 -> pw -> SE."""
    n, i = chain(conv("input", "stem", 3, 16, k=3, stride=2), hswish_nodes("stem", "s", "onnx"),
                 conv("s", "dw", 16, 16, k=3, stride=2, group=16), conv("dw", "pw", 16, 32, k=1),
                 ([helper.make_node("GlobalAveragePool", ["pw"], ["pool"])], []),
                 conv("pool", "fc1", 32, 8, k=1, seed=1), ([helper.make_node("Relu", ["fc1"], ["r"])], []),
                 conv("r", "fc2", 8, 32, k=1, seed=2),
                 ([helper.make_node("HardSigmoid", ["fc2"], ["gate"], alpha=1 / 6, beta=0.5),
                   helper.make_node("Mul", ["pw", "gate"], ["output"])], []))
    return model(n, i, inputs=[("input", (1, 3, 56, 56))], output=("output", (1, 32, 14, 14)))


def silu_nodes(x: str, out: str, gate_first: bool = False):
    """x * Sigmoid(x), as PyTorch's exporter writes SiLU (or with the operands swapped)."""
    s = f"{out}_sig"
    return [helper.make_node("Sigmoid", [x], [s]), helper.make_node("Mul", [s, x] if gate_first else [x, s], [out])], []


def newer_kinds():
    """The kinds newer mobile networks add (for the emulated device): SiLU epilogues, a full 3x3
    conv deeper than is unrolled, a 5x5 depthwise over a channel count no vector divides, SE with
    SiLU and a sigmoid gate, softmax over channels."""
    n, i = chain(conv("input", "stem", 3, 16, k=3, stride=2), silu_nodes("stem", "s"),
                 conv("s", "full", 16, 18, k=3, seed=1), silu_nodes("full", "f"),
                 conv("f", "dw", 18, 18, k=5, group=18, seed=2),
                 ([helper.make_node("GlobalAveragePool", ["dw"], ["pool"])], []),
                 conv("pool", "fc1", 18, 8, k=1, seed=3), silu_nodes("fc1", "act"),
                 conv("act", "fc2", 8, 18, k=1, seed=4),
                 ([helper.make_node("Sigmoid", ["fc2"], ["gate"]), helper.make_node("Mul", ["dw", "gate"], ["se"]),
                   helper.make_node("Softmax", ["se"], ["output"], axis=1)], []))
    return model(n, i, inputs=[("input", (1, 3, 32, 32))], output=("output", (1, 18, 16, 16)))
