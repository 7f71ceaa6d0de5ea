"""ONNX -> TVM Relax -> one shared library for a target triple. Takes ONNX from any exporter;
never imports ``mobilec.frontends``."""

from mobilec.runtime import ensure_compiler_loadable

ensure_compiler_loadable()  # one clear line, not TVM's AttributeError, when TVM was loaded runtime-only

from mobilec.compiler.build import CompileConfig, CompileResult, compile_model, inspect_model
from mobilec.compiler.importer import ModelImportError, import_onnx, parse_shape
from mobilec.targets import CPUS, TRIPLES, TargetError, resolve
from mobilec.compiler.tune import TuneConfig, tune_model

__all__ = ["CPUS", "TRIPLES", "CompileConfig", "CompileResult", "ModelImportError", "TargetError",
           "TuneConfig",
           "compile_model", "import_onnx", "inspect_model", "parse_shape", "resolve", "tune_model"]
