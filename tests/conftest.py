"""Shared fixtures: models exported and compiled once per session, seeded inputs, onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def exported(artifacts):
    """exported(name) -> path of the registered model's ONNX file (exported once)."""
    from mobilec.frontends import export_model

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = export_model(name, artifacts / f"{name}.onnx")
        return cache[name].path

    return get


@pytest.fixture(scope="session")
def compiled(artifacts, exported):
    """compiled(name) -> CompileResult for the registered model on the host (compiled once)."""
    from mobilec.compiler import compile_model

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = compile_model(exported(name), artifacts / f"{name}.so")
        return cache[name]

    return get


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
