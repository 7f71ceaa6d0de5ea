"""ONNX -> Relax: load and check the file, fix input shapes, fold shape arithmetic, import.

Every user-facing failure is an ``ImportError_`` naming the file, the node or input, and the fix.
"""

from __future__ import annotations

import contextlib
import io
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import onnx

from mobilec.errors import UserError

RANDOM_OPS = {"RandomUniformLike", "RandomNormalLike", "RandomUniform", "RandomNormal", "Bernoulli", "Multinomial"}
_T = onnx.TensorProto
DTYPES = {_T.FLOAT: "float32", _T.FLOAT16: "float16", _T.DOUBLE: "float64", _T.BOOL: "bool",
          _T.INT8: "int8", _T.INT16: "int16", _T.INT32: "int32", _T.INT64: "int64",
          _T.UINT8: "uint8", _T.UINT16: "uint16", _T.UINT32: "uint32", _T.UINT64: "uint64"}
# Operands that set a shape, an axis or a count: TVM's importer needs their values when it
# converts the node (mobilec compiles static shapes), so they must not come from a graph input.
STATIC_OPERANDS = {
    "Reshape": {1: "shape"}, "Expand": {1: "shape"}, "ConstantOfShape": {0: "shape"}, "Tile": {1: "repeats"},
    "Resize": {1: "roi", 2: "scales", 3: "sizes"}, "Upsample": {1: "scales"},
    "Pad": {1: "pads", 2: "constant_value", 3: "axes"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"}, "Split": {1: "split"},
    "Squeeze": {1: "axes"}, "Unsqueeze": {1: "axes"}, "TopK": {1: "K"}, "OneHot": {1: "depth"},
    "Range": {0: "start", 1: "limit", 2: "delta"}, "CenterCropPad": {1: "shape"},
    **{op: {1: "axes"} for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                  "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
}


class ModelImportError(UserError, ValueError):
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
        _check_text(model, "<ModelProto>")
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
    _check_text(proto, str(path))
    return proto, str(path)


def _check_text(message, source: str, where: str = "the model") -> None:
    """Every text field of the file is UTF-8 (protobuf hands back the raw bytes of one that is not,
    and fails when it is read as text: a damaged file, or an exporter that wrote it wrongly)."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING:
            for text in (value if field.is_repeated else [value]):
                if isinstance(text, bytes):
                    raise ModelImportError(f"{source}: {where}'s {field.name} is not UTF-8 text ({text[:40]!r}); "
                                           f"the file is damaged or its exporter wrote it wrongly")
        elif field.message_type is not None:
            for i, item in enumerate(value if field.is_repeated else [value]):
                index = f"[{i}]" if field.is_repeated else ""
                _check_text(item, source, f"{where}'s {field.name}{index}{_named(item)}")


def _named(message) -> str:
    try:
        name = getattr(message, "name", "")
    except UnicodeDecodeError:  # the name itself: reported when its own field is checked
        return ""
    return f" ({name})" if isinstance(name, str) and name else ""


INDEX_LIMIT = 2 ** 31 - 1  # TVM's kernels index a tensor's elements with 32-bit integers


def _check_sizes(g: onnx.GraphProto, source: str) -> None:
    """No tensor of the (shape-inferred) graph has more elements than a 32-bit index reaches."""
    for info in list(g.input) + list(g.value_info) + list(g.output):
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shape = [d.dim_value for d in dims]
            count = 1
            for d in shape:
                count *= d
            if count > INDEX_LIMIT:
                raise ModelImportError(
                    f"{source}: tensor {info.name!r} of shape {'x'.join(map(str, shape))} has {count:,} elements; "
                    f"mobilec's kernels index at most {INDEX_LIMIT:,} (32-bit): give a smaller input shape "
                    f"(--input-shape)")


def _initializer_names(g: onnx.GraphProto) -> set[str]:
    return {i.name for i in g.initializer}


def _label(n: onnx.NodeProto) -> str:
    """How errors name a node: ``conv1 (Conv)``, or by its first output when it has no name."""
    return f"{n.name} ({n.op_type})" if n.name else f"{n.op_type} -> {n.output[0] if n.output else '?'}"


def _check_eval_mode(g: onnx.GraphProto, source: str) -> None:
    random = [_label(n) for n in g.node if n.op_type in RANDOM_OPS]
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    inits = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "Dropout" and len(n.input) > 2 and n.input[2]:
            t = inits.get(n.input[2]) or (consts[n.input[2]].attribute[0].t if n.input[2] in consts else None)
            if t is None or bool(onnx.numpy_helper.to_array(t).item()):
                random.append(f"{_label(n)} training_mode")
    if random:
        raise ModelImportError(
            f"{source}: the graph draws random numbers at run time, as dropout does in training mode: "
            f"{', '.join(random)}. Export the model in eval mode (model.eval() before torch.onnx.export).")
    # BatchNormalization in training mode normalises with the batch's own statistics (opset 14+:
    # training_mode=1; before: the running-statistics outputs are asked for). Importing it with the
    # running statistics would give other numbers, silently.
    training = [_label(n) for n in g.node if n.op_type == "BatchNormalization" and (
        any(a.name == "training_mode" and a.i for a in n.attribute)
        or sum(1 for o in n.output if o) > 1)]
    if training:
        raise ModelImportError(
            f"{source}: BatchNormalization in training mode (statistics of the batch, not the running ones): "
            f"{', '.join(training)}. Export the model in eval mode (model.eval() before torch.onnx.export).")


def _check_static_operands(g: onnx.GraphProto, source: str) -> None:
    """Shape, axes, pads, scales, sizes... computed from a graph input are refused here, by name,
    instead of by TVM's importer with a message about its own types. Values derived only from
    Shape/Size of a tensor are static (the input shapes are fixed by now) and pass."""
    inits = _initializer_names(g)
    runtime = {i.name for i in g.input if i.name not in inits}
    graph_inputs = set(runtime)
    bad = []
    for n in g.node:
        for idx, what in STATIC_OPERANDS.get(n.op_type, {}).items():
            name = n.input[idx] if idx < len(n.input) else ""
            if name in runtime:
                origin = "graph input" if name in graph_inputs else "value computed from a graph input"
                bad.append(f"{_label(n)} takes its {what} from the {origin} {name!r}")
        if n.op_type not in ("Shape", "Size") and any(i in runtime for i in n.input):
            runtime.update(o for o in n.output if o)
    if bad:
        raise ModelImportError(
            f"{source}: {'; '.join(bad)}. mobilec compiles static shapes and needs these values at compile "
            f"time: make them initializers (constants in the graph), e.g. export with constant folding on.")


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
        if tt.elem_type not in DTYPES:
            name = onnx.TensorProto.DataType.Name(tt.elem_type) if tt.elem_type else "no tensor type"
            raise ModelImportError(f"{source}: input {inp.name!r} has element type {name}; mobilec takes inputs of "
                                   f"{', '.join(sorted(set(DTYPES.values())))}")
        infos.append(TensorInfo(inp.name, tuple(d.dim_value for d in dims), DTYPES[tt.elem_type]))
    return infos


def _check_supported(g: onnx.GraphProto, source: str) -> None:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = set(_get_convert_map()) | {"Constant", "If"}
    missing = [_label(n) for n in g.node if n.op_type not in supported]
    casts = [f"{_label(n)} to {onnx.TensorProto.DataType.Name(a.i)}" for n in g.node if n.op_type == "Cast"
             for a in n.attribute if a.name == "to" and a.i not in DTYPES]
    if casts:  # float8/int4/bfloat16: TVM's CPU code generation fails on them deep inside the build
        raise ModelImportError(f"{source}: casts to element types mobilec does not compile: {', '.join(casts)}")
    if missing:
        raise ModelImportError(f"{source}: {len(missing)} nodes use operators TVM's Relax frontend does not "
                               f"support: {', '.join(missing)}")


def _check_not_empty(g: onnx.GraphProto, source: str) -> None:
    """Zero-sized float tensors (a dim of 0) are legal ONNX but TVM lowers them wrongly or not at all
    (reductions over nothing, empty splits); no vision model has them, so say so."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    for v in [*g.input, *g.value_info, *g.output]:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if tt.elem_type in floats and 0 in dims:
            raise ModelImportError(f"{source}: tensor {v.name!r} has shape {dims}, with no elements; mobilec does "
                                   f"not compile zero-sized tensors")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _fold(proto: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """Fold shape computations (Shape/Gather/ConstantOfShape/... feeding Pad or Reshape, as in
    "same" padding computed at run time) to constants now that the input shapes are static.
    onnxruntime's basic graph optimisations do it (constant folding, standard ONNX ops only)."""
    import tempfile

    import onnxruntime as ort

    del proto.graph.value_info[:]  # symbolic dims left by the exporter would block folding
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    try:
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        with tempfile.TemporaryDirectory() as tmp:
            so.optimized_model_filepath = f"{tmp}/folded.onnx"
            ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return onnx.load(so.optimized_model_filepath)
    except Exception as e:  # onnxruntime's Fail/InvalidGraph/NotImplemented, shape inference errors
        raise ModelImportError(f"{source}: onnxruntime, which folds the graph's constant shape arithmetic, "
                               f"cannot load it: {_first_line(e)}") from None


def _end_open_blocks(error: BaseException) -> None:
    """Close the blocks a failed import left open in TVM's block builder.

    The importer's builder lives on in the traceback the error keeps; destroyed with blocks still
    open, TVM prints "BlockBuilder destroyed with remaining blocks!" after mobilec's error line.
    """
    from tvm import relax

    for frame, _ in traceback.walk_tb(error.__traceback__):
        for value in frame.f_locals.values():
            builder = value if isinstance(value, relax.BlockBuilder) else getattr(value, "bb", None)
            if isinstance(builder, relax.BlockBuilder):
                with contextlib.suppress(Exception):  # TVM raises once no block is open
                    while True:
                        builder._end_block()


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
    _check_static_operands(proto.graph, source)
    proto = onnx.shape_inference.infer_shapes(_fold(proto, source), data_prop=True)
    _check_not_empty(proto.graph, source)
    _check_sizes(proto.graph, source)
    from mobilec.compiler.converters import ConversionError, relax_friendly_converters

    labels = {}  # what a converter's failure calls its node; unnamed nodes get a name to find them by
    for i, n in enumerate(proto.graph.node):
        label = _label(n)
        n.name = n.name or f"mobilec_node_{i}"
        labels[n.name] = label
    try:
        # TVM prints "Error converting operator ..." before re-raising; the error below says it in one line
        with relax_friendly_converters(), contextlib.redirect_stdout(io.StringIO()):
            mod = from_onnx(proto, shape_dict={i.name: list(i.shape) for i in inputs}, keep_params_in_input=False)
    except Exception as e:
        _end_open_blocks(e)
        if isinstance(e, ConversionError):
            node = labels.get(e.node, e.node)
            raise ModelImportError(f"{source}: TVM cannot import node {node}: {_first_line(e.__cause__)}") from e
        raise ModelImportError(f"{source}: TVM's ONNX importer failed: {type(e).__name__}: {_first_line(e)}") from e
    outputs = []
    ret = mod["main"].ret_ty  # TVM 0.27 calls struct info "ty"
    for o, si in zip(proto.graph.output, getattr(ret, "fields", [ret])):
        outputs.append(TensorInfo(o.name, tuple(int(d) for d in si.shape), str(si.dtype)))
    return ImportedModel(mod, source, inputs, outputs, proto)
