"""ONNX -> Relax: load and check the file, fix input shapes, fold shape arithmetic, import.

Every user-facing failure is an ``ImportError_`` naming the file, the node or input, and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import onnx

RANDOM_OPS = {"RandomUniformLike", "RandomNormalLike", "RandomUniform", "RandomNormal", "Bernoulli", "Multinomial"}
DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT64: "int64",
          onnx.TensorProto.INT32: "int32", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8"}


class ModelImportError(ValueError):
    """A model mobilec cannot import, with the reason and the fix."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class ImportedModel:
    mod: "object"  # tvm.IRModule
    source: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    proto: onnx.ModelProto


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME=1x3x224x224`` -> (NAME, (1, 3, 224, 224))."""
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise ModelImportError(f"--input-shape {text!r}: expected NAME=DxDx..., e.g. input=1x3x224x224")
    return name, shape


def load_proto(model: Union[str, Path, onnx.ModelProto]) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, "<ModelProto>"
    path = Path(model)
    if not path.is_file():
        raise ModelImportError(f"{path}: no such file")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelImportError(f"{path}: not a readable ONNX model (truncated, or another format?): {e}") from None
    if not proto.graph.node:
        raise ModelImportError(f"{path}: not an ONNX model (no graph nodes); is it truncated or another format?")
    return proto, str(path)


def _initializer_names(g: onnx.GraphProto) -> set[str]:
    return {i.name for i in g.initializer}


def _check_eval_mode(g: onnx.GraphProto, source: str) -> None:
    random = [f"{n.name or '?'} ({n.op_type})" for n in g.node if n.op_type in RANDOM_OPS]
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    inits = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "Dropout" and len(n.input) > 2 and n.input[2]:
            t = inits.get(n.input[2]) or (consts[n.input[2]].attribute[0].t if n.input[2] in consts else None)
            if t is None or bool(onnx.numpy_helper.to_array(t).item()):
                random.append(f"{n.name or '?'} (Dropout training_mode)")
    if random:
        raise ModelImportError(
            f"{source}: the graph draws random numbers at run time, as dropout does in training mode: "
            f"{', '.join(random)}. Export the model in eval mode (model.eval() before torch.onnx.export).")


def _fix_input_shapes(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], source: str) -> list[TensorInfo]:
    g = proto.graph
    inits = _initializer_names(g)
    real = [i for i in g.input if i.name not in inits]
    unknown = sorted(set(shapes) - {i.name for i in real})
    if unknown:
        raise ModelImportError(f"{source}: --input-shape names {unknown}, but the inputs are "
                               f"{[i.name for i in real]}")
    infos = []
    for inp in real:
        tt = inp.type.tensor_type
        dims = tt.shape.dim
        if inp.name in shapes:
            shape = shapes[inp.name]
            if len(shape) != len(dims):
                raise ModelImportError(f"{source}: input {inp.name!r} has rank {len(dims)}, "
                                       f"--input-shape gives {len(shape)} dims {shape}")
            for d, v in zip(dims, shape):
                if d.HasField("dim_value") and d.dim_value != v:
                    raise ModelImportError(f"{source}: input {inp.name!r} is fixed at {d.dim_value} where "
                                           f"--input-shape gives {v}")
                d.Clear()
                d.dim_value = v
        dynamic = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
        if dynamic:
            example = "x".join(str(d.dim_value) if d.HasField("dim_value") else "N" for d in dims)
            raise ModelImportError(f"{source}: input {inp.name!r} has dynamic dims {dynamic}; fix them with "
                                   f"--input-shape {inp.name}={example} (N replaced by a number)")
        infos.append(TensorInfo(inp.name, tuple(d.dim_value for d in dims), DTYPES.get(tt.elem_type, "float32")))
    return infos


def _check_supported(g: onnx.GraphProto, source: str) -> None:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = set(_get_convert_map()) | {"Constant", "If"}
    missing = [f"{n.name or '?'} ({n.op_type})" for n in g.node if n.op_type not in supported]
    if missing:
        raise ModelImportError(f"{source}: {len(missing)} nodes use operators TVM's Relax frontend does not "
                               f"support: {', '.join(missing)}")


def _fold(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fold shape computations (Shape/Gather/ConstantOfShape/... feeding Pad or Reshape, as in
    "same" padding computed at run time) to constants now that the input shapes are static.
    onnxruntime's basic graph optimisations do it (constant folding, standard ONNX ops only)."""
    import tempfile

    import onnxruntime as ort

    del proto.graph.value_info[:]  # symbolic dims left by the exporter would block folding
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = f"{tmp}/folded.onnx"
        ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def import_onnx(model: Union[str, Path, onnx.ModelProto],
                input_shapes: Optional[dict[str, tuple[int, ...]]] = None) -> ImportedModel:
    from tvm.relax.frontend.onnx import from_onnx

    proto, source = load_proto(model)
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # never modify the caller's proto
    _check_eval_mode(proto.graph, source)
    _check_supported(proto.graph, source)  # before the checker, which stops at the first unknown op
    inputs = _fix_input_shapes(proto, dict(input_shapes or {}), source)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ModelImportError(f"{source}: fails the ONNX checker: {str(e).splitlines()[0]}") from None
    proto = onnx.shape_inference.infer_shapes(_fold(proto), data_prop=True)
    from mobilec.compiler.converters import relax_friendly_converters

    with relax_friendly_converters():
        mod = from_onnx(proto, shape_dict={i.name: list(i.shape) for i in inputs}, keep_params_in_input=False)
    outputs = []
    ret = mod["main"].ret_ty  # TVM 0.27 calls struct info "ty"
    for o, si in zip(proto.graph.output, getattr(ret, "fields", [ret])):
        outputs.append(TensorInfo(o.name, tuple(int(d) for d in si.shape), str(si.dtype)))
    return ImportedModel(mod, source, inputs, outputs, proto)
