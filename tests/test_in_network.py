"""In-network confirmation (schedules/in_network.py): the searched winners of a tuning run timed
inside the whole model, built with the database and without; those not faster there give way to
the default schedule before the whole-model verdict."""

import numpy as np
import pytest

import mobilec.runtime as mr
from helpers import seed_of
from graphs import assert_matches_onnxruntime
from mobilec.compiler import CompileConfig, compile_model, resolve
from mobilec.compiler.importer import import_onnx
from mobilec.compiler.pipeline import PipelineOptions, run_until
from mobilec.errors import ConfigError
from mobilec.schedules import in_network
from mobilec.schedules.confirm import store
from mobilec.schedules.database import CONFIRMED, for_target, open_database, valid_records
from mobilec.schedules.defaults import decisions
from helpers import tune_tiny
from graphs import tiny
from helpers import host_db

pytestmark = [pytest.mark.tuning]


def lowered():
    target = resolve("host").tvm_target()
    return run_until(import_onnx(tiny()).mod, target, PipelineOptions(), "lower"), target


def workloads(db_dir) -> list:
    """The database's workloads, one module each, in a fixed order."""
    seen = {}
    for rec in open_database(db_dir).get_all_tuning_records():
        seen.setdefault(str(rec.workload.mod), rec.workload.mod)
    return [seen[k] for k in sorted(seen)]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return compile_model(tiny(), tmp_path_factory.mktemp("lib") / "m.so", CompileConfig()).library


@pytest.mark.build
def test_every_kernel_is_timed_inside_the_model(library):
    mod, _ = lowered()
    module = mr.load(library)
    times = module.kernel_times(3)
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    tasks = extract_tasks(mod, resolve("host").tvm_target())
    assert len(tasks) == 4  # the two convolutions and the layout transposes at either end
    for task in tasks:
        names = in_network.symbols(mod, task.dispatched[0])
        called = [n for n in names if n in times]
        assert len(called) == 1, (names, sorted(times))  # each kernel found under its library symbol
        assert len(times[called[0]]) == 3 and all(0 < t < 1 for t in times[called[0]])
        assert in_network.per_inference(times, names, 3) == pytest.approx(
            sorted(times[called[0]])[1] * 1e6)
    assert np.isfinite(module(*[np.zeros(i["shape"], i["dtype"]) for i in module.inputs])).all()  # untouched
    with pytest.raises(ConfigError, match="whole number"):
        module.kernel_times(0)


@pytest.mark.build
def test_the_native_timer_times_the_same_calls_here_and_over_rpc(library, tmp_path):
    """The VM's instrument as native code built for the target: on this machine it sees every call
    the Python callback sees; over a loopback RPC session (a device) it does the same, through the
    same ``time_in_place`` the tuning run's confirmation uses."""
    from mobilec.rpc import local
    from mobilec.schedules import kernel_timer

    timer = kernel_timer.build(resolve("host").triple, tmp_path)
    here = mr.load(library)
    python, native = here.kernel_times(3), here.kernel_times(3, timer=timer)
    assert sorted(python) == sorted(native) and all(len(native[k]) == len(python[k]) for k in python)
    assert all(0 < t < 1 for calls in native.values() for t in calls)
    with local.tracker() as tracker, local.server(tracker, "timer-host"):
        device = mr.connect(tracker=tracker, key="timer-host")  # a server runs one session at a time
        with pytest.raises(ConfigError, match="give timer="):
            device.load(library).kernel_times(1)
        times = in_network.time_in_place({"a": library, "b": library}, device, timer, rounds=2, block=2)
    for build in ("a", "b"):
        kernels = {k: v for k, v in times[build].items() if not k.startswith("vm.builtin")}
        assert sorted(kernels) == sorted(k for k in python if not k.startswith("vm.builtin"))
        assert all(len(v) == 4 for v in kernels.values())  # 2 rounds x 2 inferences, the warm-up apart


@pytest.mark.build
def test_bench_lists_the_slowest_kernels_timed_in_place(library, capsys):
    from mobilec.cli import main

    assert main(["bench", str(library), "--repeat", "5", "--kernels", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    title = next(line for line in out.splitlines() if "slowest of" in line)
    assert "the 2 slowest of 4 kernels, timed inside 5 inferences" in title, out  # 2 convolutions, 2 transposes
    rows = [line for line in out.splitlines() if line.startswith("│")][1:]  # after the latency row
    assert len(rows) == 2 and all("fused_relax_nn_conv2d" in r or "transpose" in r for r in rows), out
    assert "vm.builtin" not in out
    assert main(["bench", str(library), "--repeat", "1", "--kernels", "0"]) == 2  # a user error
    assert "--kernels 0: give how many" in capsys.readouterr().err


def test_a_winner_slower_inside_the_model_gives_way_to_the_default(tmp_path, monkeypatch):
    """Both kernels' confirmed winners made searched records; inside the model (timings given) the
    pointwise one is slower and the depthwise one faster: the first goes back to its default
    schedule, the second stays, and a build applies exactly that."""
    tune_tiny(tmp_path / "db", 4)
    sub = tmp_path / "db" / host_db()
    db = open_database(sub)
    target = resolve("host").tvm_target()
    from mobilec.schedules.names import kernel_name

    wls = sorted(workloads(sub), key=lambda wl: not kernel_name(wl).startswith("pw"))  # pointwise first
    assert [kernel_name(wl).split()[0] for wl in wls] == ["pw", "dw3x3"]
    searched = []
    for wl in wls:
        recs = valid_records(db, wl)
        pick = next(r for r in recs if decisions(r.trace) != seed_of(r))
        searched.append((pick, list(pick.run_secs)))
    store(sub / CONFIRMED, searched)  # as if the kernel-level confirmation had picked them
    mod, _ = lowered()
    names = [in_network.symbols(mod, wl) for wl in wls]
    slower, faster = names
    assert slower and faster

    def timed(libraries, device, timer, rounds, block):
        runs = rounds * block
        default = {slower[0]: [10e-6] * runs, faster[0]: [10e-6] * runs}  # a kernel under one of its names
        searched = {slower[0]: [12e-6] * runs, faster[0]: [8e-6] * runs}
        return {"default": default, "searched": searched}

    monkeypatch.setattr(in_network, "time_in_place", timed)
    out = in_network.recheck(mod, target, sub, tmp_path / "untuned.so", tmp_path / "tuned.so", mr, None)
    assert {r.name.split()[0]: (r.kept, round(r.default_us), round(r.searched_us)) for r in out} == {
        "pw": (False, 10, 12), "dw3x3": (True, 10, 8)}
    applied = for_target(sub, target)
    for wl, (pick, _), keep in zip(wls, searched, (False, True)):
        best = applied.query_tuning_record(wl, target, "main")
        assert decisions(best.trace) == (decisions(pick.trace) if keep else seed_of(pick))
    assert_matches_onnxruntime(tiny(), tmp_path, tuning_db=str(tmp_path / "db"), force_tuning_db=True)

    # nothing contested any more but the kept winner; timed again the same, nothing changes
    again = in_network.recheck(mod, target, sub, tmp_path / "untuned.so", tmp_path / "tuned.so", mr, None)
    assert [r.kept for r in again] == [True]
