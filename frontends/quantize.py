"""``mobilec quantize``: static post-training quantisation of an fp32 ONNX model into the standard
QDQ form, with onnxruntime's quantisation tooling doing calibration and QuantizeLinear /
DequantizeLinear insertion.

What is quantised, and how:
- Conv, Gemm and MatMul: weights int8, symmetric, per output channel; activations per tensor
  (uint8 by default, asymmetric); biases int32 at the input scale times the weight scale.
- Adds of two activations (the residual adds), in the quantised domain.
- ReLU and ReLU6 (Clip) after a convolution: they share its output quantisation, so they become
  its output range.
- Nothing else: h-swish, h-sigmoid and the squeeze-and-excite blocks (pool, FCs, gate) stay float
  between a DequantizeLinear and a QuantizeLinear, in the form the exporter wrote them, so
  mobilec's fusion passes still find them (an ``Add`` with a constant operand, such as h-swish's
  ``x + 3``, is left float for that reason; an SE block's FCs are too small for int8 to pay).

The agreement report runs the fp32 and the int8 model in onnxruntime on held-out inputs that
calibration did not see (the int8 one exactly as written: ``reference_session``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnx

from mobilec.errors import ConfigError, UserError
from mobilec.runtime.images import image_tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
QUANTISED_OPS = ("Conv", "Gemm", "MatMul", "Add", "Relu", "Clip")  # ReLU/ReLU6 fold into the output range


class QuantizeError(UserError, ValueError):
    """A model or calibration set mobilec cannot quantise, with the reason and the fix."""


@dataclass(frozen=True)
class QuantizeConfig:
    images: Optional[str] = None  # a folder of calibration images (the registry models' preprocessing)
    random: int = 16  # seeded random calibration inputs, used when no images are given
    held_out: int = 8  # inputs calibration does not see, for the agreement report
    activation_type: str = "uint8"  # or "int8"
    seed: int = 0

    def __post_init__(self):
        if self.activation_type not in ("uint8", "int8"):
            raise ConfigError(f"activation type {self.activation_type!r}: valid: uint8, int8")
        if self.random < 1 or self.held_out < 1:
            raise ConfigError(f"--random {self.random} --held-out {self.held_out}: need at least 1 of each")


@dataclass
class QuantizeResult:
    path: Path
    calibration: str  # where the calibration inputs came from, in words
    calibration_inputs: int
    held_out: int
    top1_agreement: float  # int8 vs fp32 on held-out inputs (per pixel for segmentation maps)
    cosine: float  # mean over held-out inputs of the outputs' cosine similarity
    quantized: Counter = field(default_factory=Counter)  # op type -> nodes quantised
    seconds: float = 0.0


def _prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy onnxruntime's quantiser takes whole: every node named (nodes are chosen by name), and an
    ``Identity`` of an initializer (PyTorch's exporter shares equal biases that way) replaced by a copy
    of it, so such a bias is quantised with its convolution instead of leaving it float."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep = []
    for i, node in enumerate(graph.node):
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy = onnx.TensorProto.FromString(inits[node.input[0]].SerializeToString())
            copy.name = node.output[0]
            graph.initializer.append(copy)
            inits[copy.name] = copy
            continue
        if not node.name:
            node.name = f"{node.op_type}_{i}"
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return model


def _squeeze_excite_nodes(model: onnx.ModelProto, depth: int = 12) -> list[str]:
    """The nodes inside each squeeze-and-excite block: from a global pool of X to the Mul that
    gates X (its FCs, ReLU, h-sigmoid). They stay float, so the block is one SE kernel as in fp32
    (its FCs are tiny: int8 would save nothing and split it into a kernel per op)."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inside: list[str] = []
    for pool in model.graph.node:
        if pool.op_type not in ("GlobalAveragePool", "ReduceMean"):
            continue
        x = pool.input[0]
        paths, frontier, found = {pool.output[0]: []}, [pool.output[0]], []
        for _ in range(depth):
            nxt = []
            for t in frontier:
                for c in consumers.get(t, []):
                    if c.op_type == "Mul" and x in c.input:
                        found += paths[t]
                    elif c.output and c.output[0] not in paths:
                        paths[c.output[0]] = paths[t] + [c.name]
                        nxt.append(c.output[0])
            frontier = nxt
        inside += [name for name in dict.fromkeys(found) if name]
    return inside


def _constant_operand_adds(model: onnx.ModelProto) -> list[str]:
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "Add" and any(i in constants for i in n.input)]


def _input_spec(model: onnx.ModelProto) -> tuple[str, tuple[int, ...]]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise QuantizeError(f"{len(inputs)} graph inputs ({', '.join(i.name for i in inputs)}): calibration "
                            f"feeds one image tensor; quantise a single-input model")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims)
    if len(shape) != 4 or 0 in shape:
        raise QuantizeError(f"input {inputs[0].name!r} has shape {shape}: calibration needs a static NCHW shape; "
                            f"fix it when exporting (mobilec export --batch/--input-size)")
    return inputs[0].name, shape


def _calibration_sets(cfg: QuantizeConfig, shape) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    if cfg.images:
        folder = Path(cfg.images)
        if not folder.is_dir():
            raise QuantizeError(f"--images {folder}: not a folder; give a folder of JPEG/PNG images")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < 2:
            raise QuantizeError(f"--images {folder}: {len(files)} image(s) found; give at least 2 (some are "
                                f"held out for the agreement report), or use --random N")
        held = min(cfg.held_out, max(1, len(files) // 4))
        tensors = [image_tensor(str(p), shape, "float32", "--images") for p in files]
        return tensors[:-held], tensors[-held:], f"{len(files) - held} images from {folder}"
    rng = np.random.default_rng(cfg.seed)
    tensors = [rng.standard_normal(shape).astype(np.float32) for _ in range(cfg.random + cfg.held_out)]
    return tensors[:cfg.random], tensors[cfg.random:], (
        f"{cfg.random} seeded random inputs (no --images given: the activation ranges are those of noise, "
        f"not of photos)")


def agreement(fp32: np.ndarray, int8: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, cosine similarity) of one output pair: top-1 over the class axis (axis 1:
    logits, or each pixel of a segmentation map)."""
    a, b = fp32.astype(np.float64), int8.astype(np.float64)
    top1 = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))) if a.ndim >= 2 else float(a.argmax() == b.argmax())
    cos = float((a * b).sum() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    return top1, cos


def quantize_model(model: Union[str, Path], output: Union[str, Path],
                   config: Optional[QuantizeConfig] = None) -> QuantizeResult:
    """Quantise ``model`` (an fp32 ONNX file) into ``output`` (QDQ ONNX) and report its agreement
    with the fp32 model on held-out inputs."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    cfg = config or QuantizeConfig()
    start = time.perf_counter()
    model, output = Path(model), Path(output)
    if output.resolve() == model.resolve():
        raise QuantizeError(f"-o {output}: the same file as the input; write the int8 model elsewhere")
    if not model.is_file():
        raise QuantizeError(f"{model}: no such file")
    try:
        proto = onnx.load(str(model))
        onnx.checker.check_model(proto)
    except Exception as e:  # protobuf's DecodeError, the checker's ValidationError and friends
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantizeError(f"{model}: not a valid ONNX model ({first}); give an fp32 model from "
                            f"`mobilec export` or another exporter") from None
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in proto.graph.node):
        raise QuantizeError(f"{model}: already quantised (it has QuantizeLinear/DequantizeLinear nodes); "
                            f"compile it as it is, or quantise the fp32 model it came from")
    name, shape = _input_spec(proto)
    calib, held, described = _calibration_sets(cfg, shape)
    prepared = _prepared(proto)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calib)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {name: x}

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mobilec-quantize-") as tmp:
        src = os.path.join(tmp, "prepared.onnx")
        onnx.save(prepared, src)
        partial = output.with_name(output.name + ".partial")
        try:
            with _quiet():  # its advice to pre-process is printed through the root logger
                quantize_static(
                    src, str(partial), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=list(QUANTISED_OPS),
                    nodes_to_exclude=_constant_operand_adds(prepared) + _squeeze_excite_nodes(prepared),
                    activation_type=QuantType.QUInt8 if cfg.activation_type == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
            quantized = onnx.load(str(partial))
            onnx.checker.check_model(quantized)
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    counts = _quantized_ops(quantized)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    fp32 = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    int8 = reference_session(output)  # the file's own semantics, which mobilec compiles
    scores = [agreement(fp32.run(None, {name: x})[0], int8.run(None, {name: x})[0]) for x in held]
    return QuantizeResult(output, described, len(calib), len(held), float(np.mean([s[0] for s in scores])),
                          float(np.mean([s[1] for s in scores])), counts, time.perf_counter() - start)


def output_step(model: Union[str, Path, onnx.ModelProto]) -> float:
    """The quantisation step of a QDQ model's (first) output: the scale of the DequantizeLinear or
    QuantizeLinear it comes from, read through casts and reshapes (PyTorch's exporter writes
    scales as Constant nodes, onnxruntime's tools as initializers)."""
    from onnx import numpy_helper

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    graph = proto.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(graph.output[0].name) if graph.output else None
    while node is not None and node.op_type in ("Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Transpose"):
        node = producer.get(node.input[0])
    if node is None or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
        node = next((n for n in reversed(graph.node) if n.op_type == "QuantizeLinear"), None)
    if node is None or node.input[1] not in constants:
        raise QuantizeError("no QuantizeLinear with a constant scale: not a quantised (QDQ) model")
    return float(constants[node.input[1]].reshape(-1)[0])


def reference_session(model: Union[str, Path]):
    """onnxruntime running a QDQ file exactly as it is written (graph optimisations off): every
    DequantizeLinear, float op and QuantizeLinear in turn, no fused integer kernels. The reference
    for mobilec's int8 output; onnxruntime's optimised kernels differ from it (on AVX2 without VNNI
    its u8 x s8 products saturate 16-bit pair sums)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _quiet():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantized_ops(model: onnx.ModelProto) -> Counter:
    """Op type -> nodes of the quantised kinds whose inputs all come from DequantizeLinear."""
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    return Counter(n.op_type for n in model.graph.node if n.op_type in QUANTISED_OPS
                   and all(produced_by.get(i) == "DequantizeLinear" for i in n.input if i))
