"""Helpers the tests share (not fixtures: those are in conftest.py): seeded inputs, onnxruntime's
outputs, a build's assembly, the default schedule's decisions of a tuning record, and skipping
with the reason where this CPU cannot run what a test built."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest


def seeded_input(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def onnxruntime_outputs(model, feeds: dict) -> list[np.ndarray]:
    data = model if isinstance(model, (str, bytes)) else str(model)
    sess = ort.InferenceSession(data if isinstance(data, bytes) else data, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def seed_of(record) -> list:
    """The sampling decisions of the default schedule of a tuning record's kernel."""
    from mobilec.schedules.defaults import decisions, default_schedule
    from mobilec.targets import cpu_params

    return decisions(default_schedule(record.workload.mod, cpu_params(record.target))[0].trace)


def moved_from_seed(record) -> bool:
    """A valid record whose tile decisions differ from the default schedule's, in the same space."""
    from mobilec.schedules.defaults import decisions

    seed, mine = seed_of(record), decisions(record.trace)
    return min(float(t) for t in record.run_secs) < 1e9 and len(mine) == len(seed) > 0 and mine != seed


def assembly(model, triple: str, cpu: str) -> str:
    """The assembly of every kernel mobilec's pipeline builds for a model (ONNX file or proto)."""
    from mobilec.compiler.importer import import_onnx
    from mobilec.compiler.pipeline import build
    from mobilec.targets import resolve

    ex = build(import_onnx(model).mod, resolve(triple, cpu, 2).tvm_target())
    asm = []
    for m in [ex.mod, *ex.mod.imports]:
        try:
            asm.append(m.inspect_source("asm"))
        except Exception:  # noqa: BLE001 - modules without assembly (the VM's) raise
            continue
    return "\n".join(asm)


def host_db() -> str:
    """The database directory name for ``--target host`` on this machine (its detected CPU)."""
    from mobilec.targets import resolve

    host = resolve("host")
    return f"{host.triple}-{host.cpu}"


def run_here_or_skip(arch: str, cpu: str, what: str) -> None:
    """Skip, with the reason, when this machine cannot run code built for the ``cpu`` preset: what
    the test checked before this call (``what``: built, its assembly) stands, the run does not."""
    from mobilec.targets import CPUS, missing_flags, runnable_here

    preset = CPUS[(arch, cpu)]
    if preset not in runnable_here(arch):
        lacking = missing_flags(preset)
        pytest.skip(f"{what} checked; not run: this machine cannot run {arch} {cpu} code"
                    + (f" (its CPU lacks {', '.join(lacking)})" if lacking else ""))


def tune_tiny(db, trials):
    """``mobilec tune --conv-only`` of ``graphs.tiny`` into ``db``: a tiny budget, 2 candidates a round."""
    from graphs import tiny
    from mobilec.compiler import TuneConfig, tune_model
    from mobilec.schedules.tuning import TuneOptions

    opts = TuneOptions(trials=trials, per_round=2, live=False, all_tasks=False)  # its two convolutions
    return tune_model(tiny(), TuneConfig(db=str(db), options=opts, verify=False))


def emulator_or_skip() -> None:
    """Skip, with the reason, on a host that cannot run the emulated aarch64 device (no root, no
    qemu-user-static or debootstrap, no binfmt_misc). Under CI (``CI`` set), whose set-up installs
    all of it, a missing piece is a failure instead: a skip there would hide it."""
    import os

    from mobilec.rpc import emulate

    try:
        emulate.check_host()
    except emulate.EmulatorError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the emulated aarch64 device cannot run on this host: {e}")
