"""``tune_model``: import an ONNX model, lower it with the mobilec pipeline (so the fused kernels
are what gets tuned) and tune its kernels with MetaSchedule on the device."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import onnx

from mobilec.compiler.importer import import_onnx
from mobilec.compiler.pipeline import PipelineOptions, run_until
from mobilec.compiler.targets import TargetError, export_function, host_triple, resolve
from mobilec.errors import ConfigError
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
        raise ConfigError("--tracker needs --key: the device kind to measure on")
    if cfg.options.trials < 1 or cfg.options.per_round < 1:
        raise ConfigError(f"--trials {cfg.options.trials} --per-round {cfg.options.per_round}: both must be 1 or more")
    resolved = resolve(cfg.target, cfg.cpu, cfg.num_cores)
    if not cfg.options.tracker:
        check_local(resolved)
    fcompile = export_function(resolved.triple)
    imported = import_onnx(model, cfg.input_shapes)
    target = resolved.tvm_target()
    mod = run_until(imported.mod, target, PipelineOptions(), "lower")
    return tune_module(mod, target, database_dir(cfg.db, resolved.triple, resolved.cpu), fcompile,
                       cfg.options, console)


def check_local(resolved) -> None:
    """Measuring on this machine (``--local``) needs code this machine runs: its own triple, and
    no CPU features it lacks. Refused before any work: otherwise every candidate fails to load."""
    from mobilec.runtime.manifest import missing_cpu_flags

    host = host_triple()
    if resolved.triple != host:
        raise TargetError(f"--local measures on this machine ({host}), which cannot run {resolved.triple} code: "
                          f"measure on the device itself with --tracker HOST:PORT --key KEY (see "
                          f"`mobilec rpc`), or tune for this machine with --target host")
    lacking = missing_cpu_flags(resolved.needs)
    if lacking:
        raise TargetError(f"--local: --cpu {resolved.cpu} needs {', '.join(lacking)}, which this machine's CPU "
                          f"lacks: measure on such a device with --tracker HOST:PORT --key KEY, or leave out --cpu")
