"""In-network confirmation, after ``confirm.py``: every kernel whose confirmed winner is a searched
schedule is timed inside the whole model, built with the database and without it, and the winners
that are not faster there go back to the default schedule.

``confirm.py`` ranks each kernel alone, with caches flushed before every call. Inside the network
a kernel reads the activations its producer has just written, which are in cache, and the two
orders disagree: of the 30 winners a 30-minute run of MobileNetV3-Large confirmed on this host,
several measured 1.2-1.4x slower in place while others measured 0.65-0.9x, and the database as a
whole made the model only 0.96-0.99x faster. Here both builds run alternately, the VM timing each
call (``mobilec.runtime.Module.kernel_times``), and a searched winner stays only where its time
per inference in place beats the default schedule's by more than ``MARGIN``.

The VM's timer is native code built for the target (``kernel_timer.cc``) and loaded beside the
model where it runs, so a run on a device over RPC is confirmed in place on that device, by the
same code as a run on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mobilec.runtime.timing import alternating
from mobilec.schedules.confirm import MARGIN, store
from mobilec.schedules.database import CONFIRMED, is_database, open_database, seed_record, valid_records

ROUNDS = 12   # alternating rounds, each a block of BLOCK inferences per build
BLOCK = 5


@dataclass
class Rechecked:
    name: str           # the kernel, as a person reads it
    default_us: float   # per inference, inside the model built without the database
    searched_us: float  # per inference, inside the model built with it
    kept: bool          # the searched winner stays (False: the default schedule is confirmed instead)


def symbols(mod, workload) -> list[str]:
    """The library symbols of ``workload``'s kernels in ``mod`` (the lowered Relax module): every
    PrimFunc equal to it, under its own name and the name it takes when its weight packing is split
    off (``_prepacked``)."""
    import tvm
    import tvm_ffi

    out = []
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and tvm_ffi.structural_equal(
                tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), workload):
            out += [gv.name_hint, gv.name_hint + "_prepacked"]
    return out


def per_inference(times: dict[str, list[float]], names: list[str], runs: int) -> Optional[float]:
    """Microseconds per inference spent in the functions ``names`` (``runtime.per_inference_us``);
    None when none of them was called."""
    from mobilec.runtime import per_inference_us

    called = [times[n] for n in names if times.get(n)]
    return sum(per_inference_us(t, runs) for t in called) if called else None


def time_in_place(libraries: dict[str, Path], device, timer: Path, rounds: int = ROUNDS,
                  block: int = BLOCK) -> dict[str, dict]:
    """Per build, every function's call times (``Module.kernel_times`` with the native ``timer``)
    over ``rounds`` blocks of ``block`` inferences, the builds alternating
    (``runtime.timing.alternating``); ``device``: where the builds run (``mobilec.runtime`` itself,
    or a ``Remote``)."""
    modules = {name: device.load(path) for name, path in libraries.items()}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in modules}

    def run(name: str):
        for fn, secs in modules[name].kernel_times(block, timer=timer).items():
            times[name].setdefault(fn, []).extend(secs)
        return [0.0]

    for module in modules.values():
        module.kernel_times(2, timer=timer)  # warm: the pool started, the weights read once
    alternating({name: (lambda n=name: run(n)) for name in modules}, rounds)
    return times


def recheck(mod, target, db_dir: Path, untuned: Path, tuned: Path, device, timer: Path, rounds: int = ROUNDS,
            block: int = BLOCK) -> list[Rechecked]:
    """Time the kernels whose confirmed winner in ``db_dir`` is searched inside ``untuned`` and
    ``tuned`` (the model built from ``mod`` without and with the database) on ``device``
    (``mobilec.runtime`` or a ``Remote``), with ``timer`` built for it, and confirm the default
    schedule instead where the searched one is not faster in place. Returns one entry per kernel
    rechecked; the caller rebuilds with the database when any was reverted."""
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    from mobilec.schedules.defaults import decisions
    from mobilec.schedules.names import kernel_name
    from mobilec.schedules.tuning import default_schedules, seed_decisions

    confirmed_dir = Path(db_dir) / CONFIRMED
    if not is_database(confirmed_dir):
        return []
    confirmed, db = open_database(confirmed_dir, create=False), open_database(db_dir, create=False)
    winners = {}  # per task the run confirmed a winner for: that record
    for task in extract_tasks(mod, target):
        if found := valid_records(confirmed, task.dispatched[0]):
            winners[task] = found[0]
    seeds = seed_decisions(default_schedules(list(winners), target))
    contested = []  # (task, its default schedule's record)
    for task, winner in winners.items():
        default = seed_record(valid_records(db, task.dispatched[0]), seeds[task.task_name])
        if default is not None and decisions(winner.trace) != seeds[task.task_name]:
            contested.append((task, default))
    if not contested:
        return []
    times = time_in_place({"default": untuned, "searched": tuned}, device, timer, rounds, block)
    runs = rounds * block
    out, reverted = [], []
    for task, default in contested:
        names = symbols(mod, task.dispatched[0])
        before, after = per_inference(times["default"], names, runs), per_inference(times["searched"], names, runs)
        if before is None or after is None:
            continue  # not called in one of the builds: nothing measured to judge by
        kept = after * (1 + MARGIN) < before
        out.append(Rechecked(kernel_name(task.dispatched[0], task.task_name), before, after, kept))
        if not kept:
            reverted.append((default, list(default.run_secs)))
    if reverted:
        store(confirmed_dir, reverted)
    return out
