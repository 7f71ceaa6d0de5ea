"""Tuning with tiny budgets, measured over a real loopback tracker: host server and emulated aarch64."""

import threading
import time

import numpy as np
import pytest
import tvm_ffi

import mobilec.runtime as mr
from graphs import C, assert_matches_onnxruntime, tiny
from helpers import emulator_or_skip, host_db, moved_from_seed, onnxruntime_outputs, seeded_input
from mobilec.compiler import CompileConfig, TuneConfig, compile_model, tune_model
from mobilec.compiler.verdict import lookup
from mobilec.rpc import local
from mobilec.schedules import kernel_timer, merge, open_database
from mobilec.schedules.tuning import DeviceLost, TuneOptions

pytestmark = [pytest.mark.tuning, pytest.mark.rpc]


@pytest.fixture(scope="module")
def host_device():
    with local.tracker() as tracker, local.server(tracker, "host-cpu"):
        yield tracker


def records(db_dir) -> int:
    return len(open_database(db_dir))


def test_tune_over_rpc_then_compile_with_the_database(host_device, tmp_path):
    opts = TuneOptions(trials=8, per_round=4, tracker=host_device, key="host-cpu", live=False, all_tasks=False)
    res = tune_model(tiny(), TuneConfig(db=str(tmp_path / "db"), options=opts))
    # both convolution tasks seeded with their default schedule, measured on the device, before the search
    assert res.seeded == 2 and res.measured == 8 and records(res.database) == 10
    assert all(t.best_ms and t.best_ms > 0 for t in res.progress.tasks)
    assert res.plot and res.plot.stat().st_size > 0
    assert res.database.name == host_db()
    # the whole model built with and without the database, timed on the same device, kept beside it
    v = res.verdict
    assert v is not None and v.tuned_ms > 0 and v.untuned_ms > 0 and "host-cpu" in v.device
    assert lookup(res.database, v.key) == v
    # a resumed run with the same budget measures nothing new
    again = tune_model(tiny(), TuneConfig(db=str(tmp_path / "db"), options=opts, verify=False))
    assert again.measured == 0 and again.seeded == 0 and records(res.database) == 10
    compiled = assert_matches_onnxruntime(tiny(), tmp_path, tuning_db=str(tmp_path / "db"), force_tuning_db=True)
    assert compiled.manifest.tuned_kernels == 2 and compiled.manifest.tuning_db == str(res.database)


def test_merge_databases(host_device, tmp_path):
    for i in range(2):
        opts = TuneOptions(trials=4, per_round=2, tracker=host_device, key="host-cpu", live=False, seed=i)
        tune_model(tiny(), TuneConfig(db=str(tmp_path / f"db{i}"), options=opts, verify=False))
    sub = host_db()
    added = merge([tmp_path / "db0" / sub, tmp_path / "db1" / sub], tmp_path / "merged")
    assert added == records(tmp_path / "merged") == 16  # 4 searched + 4 seeded (2 convolutions, 2 transposes), from each


def test_two_devices_under_one_key_measure_in_parallel(tmp_path):
    with local.tracker() as tracker, local.server(tracker, "farm"), local.server(tracker, "farm"):
        opts = TuneOptions(trials=4, per_round=4, tracker=tracker, key="farm", live=False, all_tasks=False)
        res = tune_model(tiny(), TuneConfig(db=str(tmp_path / "db"), options=opts, verify=False))
    assert res.devices == 2 and res.measured == 4 and records(res.database) == 6


def test_server_killed_mid_tuning_leaves_a_usable_database(tmp_path):
    db = tmp_path / "db"
    with local.tracker() as tracker, local.server(tracker, "doomed") as proc:
        opts = TuneOptions(trials=64, per_round=4, tracker=tracker, key="doomed", live=False)
        result = {}

        def run():
            try:
                result["res"] = tune_model(tiny(), TuneConfig(db=str(db), options=opts))
            except Exception as e:  # noqa: BLE001
                result["err"] = e

        t = threading.Thread(target=run)
        t.start()
        sub = db / host_db()
        deadline = time.time() + 300
        while time.time() < deadline and not ((sub / "database_tuning_record.json").exists() and records(sub) >= 4):
            time.sleep(0.5)
        local.kill(proc)
        t.join(300)
        assert not t.is_alive(), "tuning hung after the device disappeared"
    assert isinstance(result.get("err"), DeviceLost), result
    assert "complete up to the last finished round" in str(result["err"])
    n = records(sub)
    assert 4 <= n < 64
    compiled = assert_matches_onnxruntime(tiny(), tmp_path, tuning_db=str(db))
    assert compiled.manifest.tuned_kernels >= 1


@pytest.mark.emulator
def test_tune_on_the_emulated_aarch64_device(tmp_path):
    from mobilec.rpc import emulate

    emulator_or_skip()
    # two emulated devices under one key: a farm, measuring candidates in parallel
    with local.tracker() as tracker, emulate.device(tracker, "emu-aarch64"), emulate.device(tracker, "emu-aarch64"):
        opts = TuneOptions(trials=4, per_round=2, tracker=tracker, key="emu-aarch64", live=False)
        res = tune_model(tiny(), TuneConfig(target="aarch64-linux-gnu", cpu="cortex-a76", db=str(tmp_path / "db"),
                                            options=opts))
        assert res.devices == 2
        assert res.measured == 4 and res.database.name == "aarch64-linux-gnu-cortex-a76"
        assert all(t.best_ms for t in res.progress.tasks if t.trials)
        assert res.verdict is not None and "emu-aarch64" in res.verdict.device  # timed on the device
        # the search moved away from the seed (same space: the default schedule's tile samples) in
        # at least half the tasks it touched
        touched = [t for t in res.progress.tasks if t.trials]
        moved = {tvm_ffi.structural_hash(r.workload.mod) for r in open_database(res.database).get_all_tuning_records()
                 if moved_from_seed(r)}
        assert touched and 2 * len(moved) >= len(touched), (len(moved), len(touched))
        # and a build from the database runs on the device and matches onnxruntime
        lib = compile_model(tiny(), tmp_path / "arm.so", CompileConfig(
            target="aarch64-linux-gnu", cpu="cortex-a76", tuning_db=str(tmp_path / "db"), force_tuning_db=True))
        assert lib.manifest.tuned_kernels >= 1
        m = mr.connect(tracker=tracker, key="emu-aarch64", timeout=120).load(lib.library)
        x = seeded_input((1, C, 10, 10))
        want = onnxruntime_outputs(tiny().SerializeToString(), {"input": x})[0]
        assert float(np.abs(m(x) - want).max()) <= 1e-4 * float(np.abs(want).max())
        # its kernels timed inside the model on the device, by the timer built for it
        times = m.kernel_times(2, timer=kernel_timer.build("aarch64-linux-gnu", tmp_path))
        kernels = [k for k in times if not k.startswith("vm.builtin")]
        assert len(kernels) == 4 and all(len(times[k]) == 2 and 0 < min(times[k]) < 1 for k in kernels), times
