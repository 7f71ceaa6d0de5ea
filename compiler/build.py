"""``compile_model``: ONNX in, one shared library with the weights inside and its manifest out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import onnx

from mobilec import __version__
from mobilec.compiler.artifacts import check_output, write_pair
from mobilec.compiler.importer import import_onnx
from mobilec.compiler.pipeline import PipelineOptions, pipeline, run_until
from mobilec.compiler.report import FusionReport
from mobilec.compiler.targets import TargetError, export_function, resolve
from mobilec.runtime.manifest import Manifest, elf_header, sha256
from mobilec.schedules.defaults import summarize


@dataclass
class CompileConfig:
    target: str = "host"
    cpu: Optional[str] = None
    num_cores: Optional[int] = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    tuning_db: Optional[str] = None
    dump_ir: Optional[str] = None
    fuse: bool = True
    default_schedules: bool = True  # False: kernels the database lacks get TVM's plain lowering


@dataclass
class CompileResult:
    library: Path
    manifest: Manifest
    report: FusionReport
    seconds: float


def compile_model(model: Union[str, Path, onnx.ModelProto], output: Union[str, Path],
                  config: Optional[CompileConfig] = None) -> CompileResult:
    import tvm

    cfg = config or CompileConfig()
    start = time.perf_counter()
    output = Path(output)
    check_output(output, None if isinstance(model, onnx.ModelProto) else model)  # before the long work
    resolved = resolve(cfg.target, cfg.cpu, cfg.num_cores)
    fcompile = export_function(resolved.triple)  # a missing toolchain fails before the long work
    db = _tuning_database(cfg.tuning_db, resolved.triple, resolved.cpu) if cfg.tuning_db else None
    imported = import_onnx(model, cfg.input_shapes)
    target = resolved.tvm_target()
    opts = PipelineOptions(tuning_db=db, dump_ir=cfg.dump_ir, fuse=cfg.fuse, default_schedules=cfg.default_schedules)
    ex = tvm.compile(imported.mod, target=target, relax_pipeline=pipeline(target, opts))

    def describe(lib: Path) -> Manifest:
        elf_class, machine = elf_header(lib)
        if (elf_class, machine) != (resolved.preset.elf_class, resolved.preset.elf_machine):
            raise TargetError(f"{output}: built for e_machine {machine} / class {elf_class}, but {resolved.triple} "
                              f"needs {resolved.preset.elf_machine} / {resolved.preset.elf_class}")
        return Manifest(
            mobilec_version=__version__, triple=resolved.triple, cpu=resolved.cpu, target=resolved.target,
            inputs=[i.to_dict() for i in imported.inputs], outputs=[o.to_dict() for o in imported.outputs],
            library=output.name, sha256=sha256(lib), source=imported.source, fusion=opts.report.to_dict(),
            tuning_db=str(Path(db).resolve()) if db else None, tuned_kernels=opts.tuned_kernels,
            default_schedules=summarize(opts.default_kernels), cpu_needs=list(resolved.needs),
            task="segmentation" if len(imported.outputs[0].shape) == 4 else "classification")

    manifest = write_pair(output, lambda lib: ex.export_library(str(lib), fcompile=fcompile), describe)
    return CompileResult(output, manifest, opts.report, time.perf_counter() - start)


@dataclass
class Inspection:
    report: FusionReport
    inputs: list
    outputs: list
    mod: "object"  # the IRModule after the fuse phase


def _tuning_database(root: str, triple: str, cpu: str) -> str:
    from mobilec.schedules.database import database_dir, is_database

    path = database_dir(root, triple, cpu)
    if not is_database(path):
        have = sorted(p.name for p in Path(root).glob("*") if is_database(p)) if Path(root).is_dir() else []
        raise FileNotFoundError(f"--tuning-db {root}: no database for {triple}-{cpu} "
                                f"(it has: {', '.join(have) or 'none'}); tune with `mobilec tune`")
    return str(path)


def inspect_model(model: Union[str, Path, onnx.ModelProto],
                  input_shapes: Optional[dict[str, tuple[int, ...]]] = None) -> Inspection:
    """Run the pipeline up to fusion (no code generation): the fusion report and the fused IR."""
    imported = import_onnx(model, input_shapes)
    opts = PipelineOptions()
    mod = run_until(imported.mod, resolve("host").tvm_target(), opts, "fuse")
    return Inspection(opts.report, imported.inputs, imported.outputs, mod)
