"""``tune_model``: import an ONNX model, lower it with the mobilec pipeline (so the fused kernels
are what gets tuned) and tune its kernels with MetaSchedule on the device."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import onnx

from mobilec.compiler.importer import import_onnx
from mobilec.compiler.pipeline import PipelineOptions, run_until
from mobilec.compiler.targets import export_function, resolve
from mobilec.schedules.database import database_dir
from mobilec.schedules.tuning import TuneOptions, TuneResult, tune_module


@dataclass
class TuneConfig:
    target: str = "host"
    cpu: Optional[str] = None
    num_cores: Optional[int] = None
    db: str = "tuning-db"
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    options: TuneOptions = field(default_factory=TuneOptions)


def tune_model(model: Union[str, Path, onnx.ModelProto], config: Optional[TuneConfig] = None,
               console=None) -> TuneResult:
    cfg = config or TuneConfig()
    if cfg.options.tracker and not cfg.options.key:
        raise ValueError("--tracker needs --key: the device kind to measure on")
    resolved = resolve(cfg.target, cfg.cpu, cfg.num_cores)
    fcompile = export_function(resolved.triple)
    imported = import_onnx(model, cfg.input_shapes)
    target = resolved.tvm_target()
    mod = run_until(imported.mod, target, PipelineOptions(), "lower")
    return tune_module(mod, target, database_dir(cfg.db, resolved.triple, resolved.cpu), fcompile,
                       cfg.options, console)
