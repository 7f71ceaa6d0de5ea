"""How many threads a model runs on, and on which cores.

TVM's thread pool left at its default uses half of ``hardware_concurrency`` on x86 (it assumes
hyper-threads) and ignores the process's CPU affinity, so mobilec sizes it itself: by default every
core this process may run on (``os.sched_getaffinity``), and on ARM hosts the big cores of a
big.LITTLE system (the cores above the slowest cluster, read from ``cpu_capacity`` or
``cpufreq/cpuinfo_max_freq`` in sysfs, as TVM's own kBig mode does).

TVM's pool is per calling thread and its worker count is fixed when the pool is first touched
(``runtime.config_threadpool`` can then only lower it, and the workers left over keep spinning),
so ``configure`` creates it through ``config_threadpool`` with exactly as many cores listed as
threads asked for."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path
from typing import Optional, Sequence

from mobilec.errors import ConfigError
from mobilec.targets import is_arm

CORES = ("big", "little", "all")
SYSFS_CPU = "/sys/devices/system/cpu"
# runtime.config_threadpool's affinity modes (tvm/runtime/threading_backend.h)
_SHARE_ALL_CORES = -3  # kSpecifyThreadShareAllCore: every worker may run on any of the listed cpus
_BIG = 1               # kBig: TVM's own choice of the fastest cores (used on remote devices)

_ALLOWED: Optional[list[int]] = None  # this process's cores as at the first load (the pool pins threads later)
_state = threading.local()            # per OS thread: the (threads, cpus) the pool is configured for


def allowed_cpus() -> list[int]:
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            list(range(os.cpu_count() or 1))
    return list(_ALLOWED)


def _read_number(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def core_speeds(cpus: Sequence[int], sysfs: str = SYSFS_CPU) -> dict[int, int]:
    """cpu -> relative speed: ``cpu_capacity`` where the kernel gives it for every cpu, else
    ``cpuinfo_max_freq``; all equal (0) when neither is readable."""
    root = Path(sysfs)
    for name in ("cpu_capacity", "cpufreq/cpuinfo_max_freq"):
        speeds = {c: _read_number(root / f"cpu{c}" / name) for c in cpus}
        if all(v is not None for v in speeds.values()):
            return speeds  # type: ignore[return-value]
    return {c: 0 for c in cpus}


def select_cpus(cores: Optional[str] = None, allowed: Optional[Sequence[int]] = None, sysfs: str = SYSFS_CPU,
                machine: Optional[str] = None) -> list[int]:
    """The cpus to run on. ``cores``: "big" (every core faster than the slowest cluster; all when
    the cores are alike), "little" (the slowest cluster) or "all"; None = "big" on ARM hosts,
    "all" elsewhere (x86 hybrid and turbo-favoured cores report uneven frequencies too)."""
    if cores is None:
        cores = "big" if is_arm(machine) else "all"
    if cores not in CORES:
        raise ConfigError(f"cores={cores!r}: valid: {', '.join(CORES)}")
    cpus = sorted(allowed) if allowed is not None else allowed_cpus()
    if cores == "all":
        return cpus
    speeds = core_speeds(cpus, sysfs)
    slowest = min(speeds.values())
    if slowest == max(speeds.values()):
        return cpus  # one kind of core: big and little are all of them
    if cores == "little":
        return [c for c in cpus if speeds[c] == slowest]
    return [c for c in cpus if speeds[c] > slowest]


def plan(threads: Optional[int] = None, cores: Optional[str] = None, **where) -> tuple[int, list[int]]:
    """(thread count, cpus) for a local model. ``threads`` defaults to one per selected core; more
    threads than the default cores widen the choice to every allowed core, unless ``cores`` was
    given; never more threads than cores (a spinning pool gains nothing from oversubscription)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads={threads!r}: give a whole number of threads >= 1, or leave it out for every core")
    cpus = select_cpus(cores, **where)
    if threads is not None and threads > len(cpus) and cores is None:
        cpus = select_cpus("all", **where)
    if threads is not None and threads > len(cpus):
        which = f"the {cores} cores" if cores else "this process's cores"
        raise ConfigError(f"threads={threads}: {which} are {len(cpus)} (cpus {_ranges(cpus)}); "
                         f"use at most {len(cpus)}" + ("" if cores in (None, "all") else " or cores='all'"))
    return (threads or len(cpus)), cpus


def _ranges(cpus: Sequence[int]) -> str:
    out, start = [], None
    for i, c in enumerate(cpus):
        if start is None:
            start = c
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            out.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(out)


# How long TVM's idle workers spin before sleeping, read when a pool is created. TVM's default
# kept a worker burning a whole core for ~250 ms after every inference (measured here: 24 clock
# ticks in the 0.4 s after a MobileNetV3-Large call), stealing it from whatever the app (or the
# next engine in a benchmark) does next and draining a phone's battery; 30000 spins (~20 ms)
# still bridges the gaps between kernels: the same latency within this host's noise.
SPIN_COUNT = "30000"


_OURS = "MOBILEC_SET_TVM_SPIN_COUNT"  # marks TVM_THREAD_POOL_SPIN_COUNT as set by mobilec, not the user
_unset_after_run = threading.Event()  # the spin count was set by mobilec and is to go after a first run


@contextlib.contextmanager
def _spin_count():
    """TVM reads the spin count in each new pool's first worker when it starts running, not when
    the pool is made: the variable stays until a model has run on the pool (``settled``), so a
    worker that starts late (a loaded machine) still reads it; else it spun TVM's default."""
    if "TVM_THREAD_POOL_SPIN_COUNT" in os.environ and os.environ.get(_OURS) != "1":  # the user's choice stands
        yield
        return
    os.environ["TVM_THREAD_POOL_SPIN_COUNT"] = SPIN_COUNT
    os.environ[_OURS] = "1"  # a child process started before the first run inherits it as ours, not the user's
    _unset_after_run.set()
    yield


def settled() -> None:
    """After a run on a pool mobilec made: its workers have run a task, so they have read the
    spin count, and the variable goes (not left for child processes)."""
    if _unset_after_run.is_set():
        _unset_after_run.clear()
        if os.environ.get(_OURS) == "1":
            os.environ.pop("TVM_THREAD_POOL_SPIN_COUNT", None)
            del os.environ[_OURS]


def configure(tvm, threads: int, cpus: Sequence[int]) -> int:
    """Set the calling thread's TVM pool to ``threads`` workers sharing ``cpus``; returns the count
    TVM reports. Cheap when already configured so (called before every inference)."""
    want = (threads, tuple(cpus))
    if getattr(_state, "config", None) == want:
        return _state.got
    # The first call on this thread creates the pool, with one worker per cpu listed; later calls
    # can only lower the count, and a worker left over from a bigger pool keeps a core busy
    # spinning (measured: threads=1 in a pool of 2 burned both cores). So list exactly as many
    # cpus as threads: the first ``threads`` of the chosen ones, shared by the pool's threads.
    # TVM also pins the calling thread to the listed cpus: give it back the cores it had, so
    # loading a model never confines the caller's own work.
    config = tvm.get_global_func("runtime.config_threadpool")
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    with _spin_count():
        config(_SHARE_ALL_CORES, threads, [str(c) for c in list(cpus)[:threads]])
    if mine is not None:
        os.sched_setaffinity(0, mine)
    got = int(tvm.get_global_func("runtime.NumThreads")())
    if got != threads:
        warnings.warn(f"TVM's thread pool on this thread was created with {plural(got, 'worker')} before mobilec "
                      f"configured it; running on {plural(got)}, not {threads} (load and run models before "
                      f"other TVM code on this thread, or call them from a new thread)", RuntimeWarning,
                      stacklevel=3)
    _state.config, _state.got = want, got
    return got


def configure_remote(session, threads: Optional[int]) -> int:
    """On a device over RPC, in the session's thread (where the device runs every call of the
    session): ``threads`` workers on TVM's own choice of the fastest cores (kBig), or TVM's default
    there when None (on ARM: its big cores). Returns the count the device reports."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads={threads!r}: give a whole number of threads >= 1, or leave it out for the "
                             f"device's default")
        # Only scalars cross RPC (no cpu list), so the device's pool keeps the worker count it was
        # created with (TVM_NUM_THREADS of its server, else TVM's default); kBig picks the fastest cores.
        session.get_function("runtime.config_threadpool")(_BIG, threads)
    got = int(session.get_function("runtime.NumThreads")())
    if threads is not None and got != threads:
        warnings.warn(f"the device's TVM thread pool has {plural(got, 'worker')}; running on {plural(got)}, not "
                      f"{threads} (start its server with TVM_NUM_THREADS={threads} for more)", RuntimeWarning,
                      stacklevel=3)
    return got


def plural(n: int, word: str = "thread") -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
