"""Threads: every core this process may run on by default, big cores on ARM, the count TVM really
uses (read back from TVM, and seen in the worker threads' CPU time), and on a device over RPC."""

import json
import os
import subprocess
import sys

import pytest

import mobilec.runtime as mr
from mobilec.runtime.threads import plan, plural, select_cpus

NAME = "mobilenet_v3_small_035"


def fake_sysfs(tmp_path, capacity=None, max_freq=None):
    """/sys/devices/system/cpu as a phone's kernel writes it (one value per cpu)."""
    for name, values in (("cpu_capacity", capacity), ("cpufreq/cpuinfo_max_freq", max_freq)):
        for cpu, v in enumerate(values or []):
            f = tmp_path / f"cpu{cpu}" / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(f"{v}\n")
    return str(tmp_path)


@pytest.mark.structure
def test_big_little_selection_from_sysfs(tmp_path):
    # 4 little (A55) + 3 big (A78) + 1 prime (X1): "big" is every core above the little cluster
    sysfs = fake_sysfs(tmp_path, capacity=[250] * 4 + [870] * 3 + [1024])
    eight = range(8)
    assert select_cpus(None, eight, sysfs, machine="aarch64") == [4, 5, 6, 7]
    assert select_cpus("little", eight, sysfs, machine="aarch64") == [0, 1, 2, 3]
    assert select_cpus("all", eight, sysfs, machine="aarch64") == list(eight)
    assert select_cpus(None, eight, sysfs, machine="x86_64") == list(eight)  # x86: every core by default
    assert select_cpus("big", [0, 1, 6], sysfs, machine="aarch64") == [6]   # only the cores we may run on
    with pytest.raises(ValueError, match="cores='medium': valid: big, little, all"):
        select_cpus("medium", eight, sysfs)


@pytest.mark.structure
def test_selection_falls_back_to_max_freq_then_to_all(tmp_path):
    freq = fake_sysfs(tmp_path / "freq", max_freq=[1800000] * 2 + [2400000] * 2)
    assert select_cpus("big", range(4), freq) == [2, 3] and select_cpus("little", range(4), freq) == [0, 1]
    same = fake_sysfs(tmp_path / "same", capacity=[1024] * 4)
    assert select_cpus("big", range(4), same) == select_cpus("little", range(4), same) == [0, 1, 2, 3]
    nothing = str(tmp_path / "nothing")
    assert select_cpus("big", range(3), nothing, machine="armv7l") == [0, 1, 2]


@pytest.mark.structure
def test_plan_counts_and_refuses_more_threads_than_cores(tmp_path):
    sysfs = fake_sysfs(tmp_path, capacity=[250] * 4 + [1024] * 4)
    where = dict(allowed=range(8), sysfs=sysfs, machine="aarch64")
    assert plan(**where) == (4, [4, 5, 6, 7])
    assert plan(2, **where) == (2, [4, 5, 6, 7])
    assert plan(6, **where) == (6, list(range(8)))  # more than the big cores: widened to all, as asked
    with pytest.raises(ValueError, match=r"threads=6: the big cores are 4 \(cpus 4-7\); use at most 4 or cores='all'"):
        plan(6, "big", **where)
    with pytest.raises(ValueError, match=r"threads=9: this process's cores are 8 \(cpus 0-7\); use at most 8"):
        plan(9, **where)
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="whole number of threads"):
            plan(bad, **where)
    assert [plural(1), plural(2), plural(1, "call")] == ["1 thread", "2 threads", "1 call"]


# In a fresh process: the count TVM reports, and the CPU time the pool's worker threads spend
# while the model runs (worker threads are every task but the main one).
POOL = r"""
import json, os, sys
import numpy as np
if sys.argv[2] != "all":
    os.sched_setaffinity(0, {int(c) for c in sys.argv[2].split(",")})
import mobilec.runtime as mr

def worker_cpu():
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != os.getpid():
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime, clock ticks
    return total

threads = None if sys.argv[3] == "default" else int(sys.argv[3])
m = mr.load(sys.argv[1], threads=threads)
x = np.zeros(m.inputs[0]["shape"], dtype="float32")
m(x)
before = worker_cpu()
for _ in range(60):
    m(x)
tvm = mr._tvm()
print(json.dumps({"threads": m.threads, "tvm": tvm.get_global_func("runtime.NumThreads")(),
                  "worker_ticks": worker_cpu() - before}))
"""


def pool_facts(library, cpus="all", threads="default") -> dict:
    out = subprocess.run([sys.executable, "-c", POOL, str(library), cpus, threads], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.build
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to tell one thread from two")
def test_default_is_every_core_of_the_process_and_workers_really_run(compiled):
    lib = compiled(NAME).library
    n = len(os.sched_getaffinity(0))
    every = pool_facts(lib)
    assert every["threads"] == every["tvm"] == n  # TVM's own default on x86 is half of them
    assert every["worker_ticks"] > 0, every       # the other threads did part of the work
    one = pool_facts(lib, threads="1")
    assert one["threads"] == one["tvm"] == 1 and one["worker_ticks"] <= 1, one
    pinned = pool_facts(lib, cpus="0")            # a process limited to one core (taskset, cgroups)
    assert pinned["threads"] == pinned["tvm"] == 1, pinned


@pytest.mark.build
def test_threads_argument_and_errors(compiled):
    lib = compiled(NAME).library
    mine = os.sched_getaffinity(0)
    m = mr.load(lib, threads=1)
    assert os.sched_getaffinity(0) == mine, "loading a model must not pin the caller to fewer cores"
    assert m.threads == 1 and "1 thread," in repr(m)
    assert m.benchmark(warmup=0, repeat=1)["threads"] == 1
    too_many = len(os.sched_getaffinity(0)) + 1
    with pytest.raises(ValueError, match=f"threads={too_many}: this process's cores are"):
        mr.load(lib, threads=too_many)


@pytest.mark.rpc
def test_threads_on_a_device_over_rpc(compiled):
    from mobilec.rpc import local

    lib = compiled(NAME).library
    with local.tracker() as tracker, local.server(tracker, "pool", env={"TVM_NUM_THREADS": "2"}):
        remote = mr.connect(tracker=tracker, key="pool")
        assert remote.load(lib).threads == 2       # the device's own pool, reported
        assert remote.load(lib, threads=1).threads == 1
        with pytest.warns(RuntimeWarning, match="running on 2 threads, not 3 .*TVM_NUM_THREADS=3"):
            assert remote.load(lib, threads=3).threads == 2


IDLE = r"""
import json, os, sys, time
import numpy as np
import mobilec.runtime as mr

def cpu_ticks():
    total = 0
    for tid in os.listdir("/proc/self/task"):
        fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total

m = mr.load(sys.argv[1])
x = np.zeros(m.inputs[0]["shape"], dtype="float32")
for _ in range(5):
    m(x)
before = cpu_ticks()
time.sleep(0.4)
print(json.dumps({"idle_ticks": cpu_ticks() - before, "env": "TVM_THREAD_POOL_SPIN_COUNT" in os.environ}))
"""


@pytest.mark.build
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a worker thread besides the caller")
def test_idle_pool_does_not_burn_a_core(compiled):
    """TVM's default spin kept a worker busy ~250 ms after every call (24 clock ticks in 0.4 s)."""
    out = subprocess.run([sys.executable, "-c", IDLE, str(compiled(NAME).library)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["idle_ticks"] <= 8 and not facts["env"], facts
