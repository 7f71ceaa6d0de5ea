"""``tune_model``: import an ONNX model, lower it with the mobilec pipeline (so the fused kernels
are what gets tuned) and tune its kernels with MetaSchedule on the device."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import onnx

from mobilec.compiler.importer import import_onnx
from mobilec.compiler.pipeline import PipelineOptions, run_until
from mobilec.targets import TargetError, export_function, host_triple, resolve
from mobilec.compiler.verdict import Verdict, measure, model_key, record
from mobilec.errors import ConfigError, UserError
from mobilec.schedules.database import database_dir
from mobilec.schedules.tuning import TuneOptions, TuneResult, tune_module

log = logging.getLogger("mobilec.compiler")


@dataclass
class TuneConfig:
    target: str = "host"
    cpu: Optional[str] = None
    num_cores: Optional[int] = None
    db: str = "tuning-db"
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    options: TuneOptions = field(default_factory=TuneOptions)
    verify: bool = True  # at the end, time the model with and without the database (compiler/verdict.py)


def tune_model(model: Union[str, Path, onnx.ModelProto], config: Optional[TuneConfig] = None,
               console=None) -> TuneResult:
    cfg = config or TuneConfig()
    if cfg.options.tracker and not cfg.options.key:
        raise ConfigError("--tracker needs --key: the device kind to measure on")
    if (cfg.options.trials is not None and cfg.options.trials < 1) or cfg.options.per_round < 1:
        raise ConfigError(f"--trials {cfg.options.trials} --per-round {cfg.options.per_round}: both must be 1 or more")
    if cfg.options.minutes is not None and not cfg.options.minutes > 0:
        raise ConfigError(f"--minutes {cfg.options.minutes}: the time budget must be positive")
    if not cfg.options.build_limit > 0:
        raise ConfigError(f"--build-limit {cfg.options.build_limit}: a candidate's build needs some seconds")
    resolved = resolve(cfg.target, cfg.cpu, cfg.num_cores)
    if not cfg.options.tracker:
        check_local(resolved)
    fcompile = export_function(resolved.triple)
    imported = import_onnx(model, cfg.input_shapes)
    target = resolved.tvm_target()
    opts = PipelineOptions()
    mod = run_until(imported.mod, target, opts, "lower")
    db_dir = database_dir(cfg.db, resolved.triple, resolved.cpu)
    result = tune_module(mod, target, db_dir, fcompile, cfg.options, console)
    if cfg.verify:
        result.verdict = _verify(model, imported, cfg, db_dir, opts, mod, target, result, console)
    return result


def _verify(model, imported, cfg: TuneConfig, db_dir: Path, opts: PipelineOptions, mod, target, result: TuneResult,
            console) -> Optional[Verdict]:
    """The whole model built with the database and without, timed on the tuning device
    (``compiler/verdict.py``); None, with a warning, when that cannot be done (the database is
    complete either way). Measuring on this machine, the searched winners are first timed inside
    the model, on the same device, and those not faster there give way to the default schedule
    (``schedules/in_network.py``; ``result.rechecked``)."""
    import mobilec.runtime as mr
    from mobilec.compiler.build import CompileConfig, compile_model
    from mobilec.schedules import kernel_timer
    from mobilec.schedules.in_network import recheck

    def build(output: Path, tuning_db: Optional[str]) -> Path:
        return compile_model(model, output, CompileConfig(
            target=cfg.target, cpu=cfg.cpu, num_cores=cfg.num_cores, input_shapes=cfg.input_shapes,
            tuning_db=tuning_db, force_tuning_db=True)).library

    remote = cfg.options.tracker
    device = f"the {cfg.options.key!r} device at {remote}" if remote else "this machine"
    key = model_key(imported, opts.layout, opts.fuse, opts.default_schedules)
    open_device = (lambda: mr.connect(tracker=remote, key=cfg.options.key)) if remote else (lambda: mr)
    try:
        with tempfile.TemporaryDirectory(prefix="mobilec-verdict-") as tmp:
            untuned, tuned = build(Path(tmp) / "untuned.so", None), build(Path(tmp) / "tuned.so", cfg.db)
            if console is not None:
                console.print(f"timing the searched winners inside the whole model on {device} ...")
            timer = kernel_timer.build(resolve(cfg.target, cfg.cpu, cfg.num_cores).triple, Path(tmp))
            result.rechecked = recheck(mod, target, db_dir, untuned, tuned, open_device(), timer)
            if not all(r.kept for r in result.rechecked):
                tuned = build(Path(tmp) / "rechecked.so", cfg.db)
            if console is not None:
                console.print(f"timing the whole model with and without the database on {device} ...")
            verdict = measure(imported.source, key, untuned, tuned, open_device, device)
    except UserError as e:
        log.warning("warning: could not time the whole model with and without %s (%s); `compile --tuning-db` "
                    "applies it unmeasured", db_dir, e)
        return None
    record(db_dir, verdict)
    return verdict


def check_local(resolved) -> None:
    """Measuring on this machine (``--local``) needs code this machine runs: its own triple, and
    no CPU features it lacks. Refused before any work: otherwise every candidate fails to load."""
    from mobilec.targets import missing_cpu_flags

    host = host_triple()
    if resolved.triple != host:
        raise TargetError(f"--local measures on this machine ({host}), which cannot run {resolved.triple} code: "
                          f"measure on the device itself with --tracker HOST:PORT --key KEY (see "
                          f"`mobilec rpc`), or tune for this machine with --target host")
    lacking = missing_cpu_flags(resolved.needs)
    if lacking:
        raise TargetError(f"--local: --cpu {resolved.cpu} needs {', '.join(lacking)}, which this machine's CPU "
                          f"lacks: measure on such a device with --tracker HOST:PORT --key KEY, or leave out --cpu")
