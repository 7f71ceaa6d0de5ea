"""``compile_model``: ONNX in, one shared library with the weights inside and its manifest out."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnx

from mobilec import __version__
from mobilec.compiler.artifacts import check_output, write_pair
from mobilec.compiler.importer import import_onnx
from mobilec.compiler.pipeline import PipelineOptions, Progress, build, check_layout, run_until
from mobilec.compiler.report import FusionReport
from mobilec.targets import TargetError, export_function, resolve
from mobilec.compiler.verdict import lookup, model_key
from mobilec.runtime.manifest import SIGNATURE, Manifest, elf_header, sha256, signature
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
    layout: str = "NHWC"  # the activations' layout through the network; "NCHW": as imported (for comparison)
    force_tuning_db: bool = False  # apply tuning_db even where tuning measured it slower for this model
    integer: bool = True  # False: a quantised (QDQ) model runs in float, dequantising as the file says

    def __post_init__(self):
        check_layout(self.layout)  # before the long work


@dataclass
class CompileResult:
    library: Path
    manifest: Manifest
    report: FusionReport
    seconds: float
    warnings: list[str] = field(default_factory=list)  # e.g. a --tuning-db that matched no kernel


def compile_model(model: Union[str, Path, onnx.ModelProto], output: Union[str, Path],
                  config: Optional[CompileConfig] = None, progress: Optional[Progress] = None) -> CompileResult:
    """Compile ``model`` into ``output`` (a .so) and its manifest. ``progress(stage, detail, n, of)``,
    if given, is told each step as it starts (``pipeline.Progress``): import, the pipeline's
    phases, each kernel scheduled, code generation, link."""
    cfg = config or CompileConfig()
    tell = progress or (lambda *_: None)
    start = time.perf_counter()
    output = Path(output)
    check_output(output, None if isinstance(model, onnx.ModelProto) else model)  # before the long work
    resolved = resolve(cfg.target, cfg.cpu, cfg.num_cores)
    fcompile = export_function(resolved.triple)  # a missing toolchain fails before the long work
    db = _tuning_database(cfg.tuning_db, resolved.triple, resolved.cpu) if cfg.tuning_db else None
    tell("import", "", 0, 0)
    imported = import_onnx(model, cfg.input_shapes)
    warnings = []
    if db and not cfg.force_tuning_db:
        verdict = lookup(db, model_key(imported, cfg.layout, cfg.fuse, cfg.default_schedules))
        if verdict is not None and not verdict.faster:
            warnings.append(f"--tuning-db {db}: not applied: when tuning ended it made this model slower "
                            f"({verdict.describe()}); the default schedules are used (--force-tuning-db "
                            f"applies it anyway; more trials may find better kernels)")
            logging.getLogger("mobilec.compiler").warning("warning: %s", warnings[-1])
            db = None
    target = resolved.tvm_target()
    opts = PipelineOptions(tuning_db=db, dump_ir=cfg.dump_ir, fuse=cfg.fuse, default_schedules=cfg.default_schedules,
                           layout=cfg.layout, integer=cfg.integer, progress=progress)
    ex = build(with_signature(imported.mod, imported.inputs, imported.outputs), target, opts)
    if db and not opts.tuned_kernels:
        warnings.append(_unmatched_database(db, opts, resolved))

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

    tell("link", "", 0, 0)
    manifest = write_pair(output, lambda lib: ex.export_library(str(lib), fcompile=fcompile), describe)
    return CompileResult(output, manifest, opts.report, time.perf_counter() - start, warnings)


def with_signature(mod, inputs, outputs):
    """``mod`` plus a function returning the inputs' and outputs' names, shapes and dtypes, so that
    a loaded library can be checked against its manifest's (runtime.manifest.signature)."""
    from tvm import relax

    data = np.frombuffer(signature([i.to_dict() for i in inputs], [o.to_dict() for o in outputs]), dtype=np.uint8)
    bb = relax.BlockBuilder()
    with bb.function(SIGNATURE, []):
        bb.emit_func_output(relax.const(data))
    mod = mod.clone()  # the caller's module stays as it was
    mod[SIGNATURE] = bb.get()[SIGNATURE]
    return mod


@dataclass
class Inspection:
    report: FusionReport
    inputs: list
    outputs: list
    mod: "object"  # the IRModule after the fuse phase


def _tuning_database(root: str, triple: str, cpu: str) -> str:
    """The database directory for this target under ``root``, checked line by line now, before
    the long work (a corrupt file is one error naming the file, the line and the fix)."""
    from mobilec.schedules.database import database_dir, is_database, validate

    path = database_dir(root, triple, cpu)
    if not is_database(path):
        have = sorted(p.name for p in Path(root).glob("*") if is_database(p)) if Path(root).is_dir() else []
        raise FileNotFoundError(f"--tuning-db {root}: no database for {triple}-{cpu} "
                                f"(it has: {', '.join(have) or 'none'}); tune with `mobilec tune`")
    validate(path)
    return str(path)


def _unmatched_database(db: str, opts: PipelineOptions, resolved) -> str:
    """Why a tuning database gave no kernel, logged as a warning (a build that silently ignores
    the database it was given is slower than the user believes)."""
    from mobilec.schedules.database import target_label, targets_of

    tuned_for = targets_of(db, limit=None)
    ours = target_label(resolved.target)
    if not tuned_for:
        why = "it holds no successfully measured kernel (every candidate failed when it was tuned)"
    elif ours not in tuned_for:
        why = f"it was tuned for {', '.join(tuned_for)}, this build is for {ours}"
    else:
        why = ("it was tuned for other kernels: another model or input shape, or other compile flags "
               "(--no-fuse and --no-default-schedules change the kernels; compile with the flags it was "
               "tuned with, or tune again with these)")
    msg = f"--tuning-db {db}: 0 of {opts.kernels} kernels matched the database: {why}"
    logging.getLogger("mobilec.compiler").warning("warning: %s", msg)
    return msg


def inspect_model(model: Union[str, Path, onnx.ModelProto],
                  input_shapes: Optional[dict[str, tuple[int, ...]]] = None) -> Inspection:
    """Run the pipeline up to fusion (no code generation): the fusion report and the fused IR."""
    imported = import_onnx(model, input_shapes)
    opts = PipelineOptions()
    mod = run_until(imported.mod, resolve("host").tvm_target(), opts, "fuse")
    return Inspection(opts.report, imported.inputs, imported.outputs, mod)
