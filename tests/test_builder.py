"""The tuning run's builder: candidates built in worker processes that outlive a batch, each build
with a time limit past which the candidate is a failed one and the search goes on."""

from __future__ import annotations

import os

import numpy as np
import pytest


def _kernel():
    """A small kernel as a tuning task hands it to the builder: y = x * 2 + 1 over 4096 floats."""
    import tvm
    from tvm import te

    x = te.placeholder((4096,), "float32", name="x")
    y = te.compute((4096,), lambda i: x[i] * 2.0 + 1.0, name="y")
    return tvm.IRModule({"main": te.create_prim_func([x, y]).with_attr("global_symbol", "main")})


@pytest.fixture(scope="module")
def host():
    from mobilec.targets import export_function, resolve

    r = resolve("host")
    return r.tvm_target(), export_function(r.triple)


def _inputs(target, n: int):
    from tvm.s_tir.meta_schedule.builder import BuilderInput

    return [BuilderInput(_kernel(), target) for _ in range(n)]


@pytest.mark.build
def test_candidates_are_built_by_workers_that_outlive_a_batch(host, tmp_path):
    import tvm

    from mobilec.schedules.builder import PooledBuilder

    target, fcompile = host
    builder = PooledBuilder(fcompile, str(tmp_path), limit_s=60, workers=2)
    try:
        first = builder.build(_inputs(target, 3))
        workers = {id(w): w._proc.pid for w in builder._pool._worker_map.values()}
        second = builder.build(_inputs(target, 2))
        assert {id(w): w._proc.pid for w in builder._pool._worker_map.values()} == workers  # the same processes
    finally:
        builder.close()
    assert builder._pool is None and all(r.error_msg is None for r in first + second)
    for r in first + second:
        assert os.path.commonpath([r.artifact_path, str(tmp_path)]) == str(tmp_path)
    lib = tvm.runtime.load_module(first[0].artifact_path)
    x = tvm.runtime.tensor(np.arange(4096, dtype="float32"))
    y = tvm.runtime.tensor(np.zeros(4096, dtype="float32"))
    lib["main"](x, y)
    np.testing.assert_array_equal(y.numpy(), np.arange(4096, dtype="float32") * 2 + 1)


@pytest.mark.build
def test_a_build_past_the_limit_is_a_failed_candidate_and_the_next_one_builds(host, tmp_path):
    """A limit shorter than any build (lowering, LLVM and the linker take a tenth of a second at
    least): every candidate of the batch fails with the limit in its message, the workers are
    replaced, and a later batch with a sane limit builds."""
    from mobilec.schedules.builder import PooledBuilder

    target, fcompile = host
    builder = PooledBuilder(fcompile, str(tmp_path), limit_s=0.001, workers=1)
    try:
        late = builder.build(_inputs(target, 2))
    finally:
        builder.close()
    assert [r.artifact_path for r in late] == [None, None]
    assert all("build took longer than 0.001 s" in r.error_msg for r in late)
    builder.limit_s = 60
    try:
        again = builder.build(_inputs(target, 1))
    finally:
        builder.close()
    assert again[0].error_msg is None and os.path.exists(again[0].artifact_path)
