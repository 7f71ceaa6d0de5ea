"""Confirmation, the last step of a tuning run: each task's default schedule and its fastest searched
candidates are measured again, in interleaved rounds through the same runner, and the one that wins
this re-measurement is what ``compile --tuning-db`` applies.

A search keeps the fastest of many noisy measurements. Where the noise is larger than the
differences the space holds (on a busy host the same kernel measures up to 1.7x apart from one round
to the next), the fastest record is a lucky draw more often than a faster kernel, and a database of
lucky draws makes the model slower. Measured side by side, in rounds whose order rotates, the
contenders share whatever the device is doing; a searched candidate replaces the default schedule
only when it wins by more than ``MARGIN``.

The winners are kept in ``DB/confirmed``, a database of its own holding one record per workload
(timed by this re-measurement); ``database.for_target`` puts it in front of the search's records,
which stay as they were measured (the search resumes from them). Workloads a run did not confirm
(an older database, or ``merge``'s output) are applied by their fastest record, as before.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Optional

from mobilec.runtime.timing import round_order
from mobilec.schedules.database import (CONFIRMED, copy_record, is_database, open_database, seed_record, swap_in,
                                        valid_records)

CONTENDERS = 3           # fastest searched candidates (distinct decisions) re-measured beside the default
ROUNDS = 3               # interleaved rounds; a contender's time is the median of its rounds' means
MARGIN = 0.02            # a searched candidate must beat the default by more than this to replace it


def seedings(tasks: int, k: int = CONTENDERS) -> float:
    """What confirming ``tasks`` tasks costs, in default schedules seeded (a build and a run each):
    a build and ``ROUNDS`` runs per contender, builds the bulk, about 1.5 seedings each."""
    return 1.5 * tasks * (k + 1)


@dataclass
class Confirmed:
    name: str                  # the task, as a person reads it
    weight: float
    default_ms: Optional[float]  # the default schedule, re-measured (None: it has none, or it failed)
    winner_ms: float
    searched_won: bool         # a searched candidate beat the default schedule (False: it held, or there is none)
    contenders: int


def _contenders(records: list, seed: list, k: int) -> list:
    """The default schedule's record (first, where measured) and the ``k`` fastest searched ones with
    distinct decisions (``records`` come fastest first); the default alone where no searched record
    measured faster than it (the default holds: nothing to confirm)."""
    from mobilec.schedules.defaults import decisions

    default = seed_record(records, seed) if seed else None
    if default is not None and records and decisions(records[0].trace) == decisions(default.trace):
        return [default]
    picked, seen = ([default], [decisions(default.trace)]) if default is not None else ([], [])
    for rec in records:
        d = decisions(rec.trace)
        if len(picked) - (default is not None) >= k:
            break
        if d not in seen:
            picked.append(rec)
            seen.append(d)
    return picked


def confirm(tasks, target, db, db_dir: Path, builder, runner, seeds: dict[str, list], names: dict[str, str],
            rounds: int = ROUNDS, k: int = CONTENDERS) -> list[Confirmed]:
    """Re-measure, interleaved, the default and the ``k`` fastest searched candidates of every task
    in ``tasks`` that has a choice to make; store each task's winner in ``db_dir/confirmed``."""
    from tvm.s_tir import meta_schedule as ms

    entries = []  # (task, contenders, has a default)
    for task in tasks:
        seed = seeds.get(task.task_name, [])
        picked = _contenders(valid_records(db, task.dispatched[0]), seed, k)
        if len(picked) > 1:
            entries.append((task, picked, bool(seed) and seed_record(picked[:1], seed) is not None))
    if not entries:
        return []
    flat = [rec for _, picked, _ in entries for rec in picked]
    built = builder.build([ms.builder.BuilderInput(rec.as_measure_candidate().sch.mod, target) for rec in flat])
    times: list[list[float]] = [[] for _ in flat]  # per contender, its rounds' means (s)
    runs: list[list[float]] = [[] for _ in flat]
    ok = [i for i, b in enumerate(built) if b.error_msg is None]
    try:
        for r in range(rounds):
            order = round_order(ok, r)  # shuffled: no contender always first, or after the same one
            results = [f.result() for f in runner.run(
                [ms.runner.RunnerInput(built[i].artifact_path, "cpu", flat[i].args_info) for i in order])]
            for i, res in zip(order, results):
                if res.error_msg is None and res.run_secs:
                    secs = [float(s) for s in res.run_secs]
                    times[i].append(sum(secs) / len(secs))
                    runs[i].extend(secs)
    finally:
        for b in built:
            if b.artifact_path:
                shutil.rmtree(Path(b.artifact_path).parent, ignore_errors=True)

    out, winners, at = [], [], 0
    for task, picked, has_default in entries:
        span = range(at, at + len(picked))
        at += len(picked)
        timed = {i: median(times[i]) for i in span if len(times[i]) == rounds}
        if not timed:
            continue  # nothing re-measured: the search's records apply as before
        default = span[0] if has_default and span[0] in timed else None
        best = min(timed, key=timed.get)
        if default is not None and timed[best] * (1 + MARGIN) >= timed[default]:
            best = default  # not a clear win: the default schedule holds
        winners.append((flat[best], runs[best]))
        out.append(Confirmed(names.get(task.task_name, task.task_name), float(task.weight),
                             None if default is None else timed[default] * 1e3, timed[best] * 1e3,
                             default is not None and best != default, len(timed)))
    store(db_dir / CONFIRMED, winners)
    return out


def store(path: Path, winners: list) -> None:
    """Write the confirmed database: these winners, and the earlier runs' winners of other
    workloads; staged beside it and swapped in whole."""
    import tvm_ffi

    mine = [rec.workload.mod for rec, _ in winners]

    def replaced(mod) -> bool:
        return any(tvm_ffi.structural_equal(mod, m) for m in mine)

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        out = open_database(staging)
        if is_database(path):
            for rec in open_database(path, create=False).get_all_tuning_records():
                if not replaced(rec.workload.mod):
                    copy_record(out, rec)
        for rec, secs in winners:
            copy_record(out, rec, [float(s) for s in secs])
        del out
        swap_in(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def estimate_ms(confirmed: list[Confirmed]) -> tuple[float, float]:
    """The confirmed tasks' weighted sum of kernel times: with the default schedules, and with the
    confirmed winners, both from the same re-measurement."""
    both = [c for c in confirmed if c.default_ms is not None]
    return (sum(c.weight * c.default_ms for c in both), sum(c.weight * c.winner_ms for c in both))

