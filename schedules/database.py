"""Tuning databases: MetaSchedule's JSON database, one directory per (target triple, cpu) under a
root, so databases from several devices and kinds live side by side and merge.

Every database is checked line by line before TVM reads it: TVM's own loader parses the lines in
parallel and reports a bad one as "parallel_for_dynamic error with Unexpected token", naming
neither the file nor the line."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from mobilec.errors import UserError

FILES = ("database_workload.json", "database_tuning_record.json")
FIX = ("delete that line (a write cut short leaves one), re-tune into a fresh --db, or rebuild the "
       "database with `mobilec tune-merge` from good sources")


class DatabaseError(UserError, ValueError):
    """A tuning database that cannot be read (a corrupt line, a record pointing nowhere)."""


def database_dir(root: str | Path, triple: str, cpu: str) -> Path:
    """``root/<triple>-<cpu>``; a ``root`` that already holds the JSON files is used as it is."""
    root = Path(root)
    if all((root / f).exists() for f in FILES):
        return root
    return root / f"{triple}-{cpu}"


CONFIRMED = "confirmed"  # subfolder: each workload's winner of a tuning run's re-measurement (confirm.py)


def is_database(path: str | Path) -> bool:
    return all((Path(path) / f).exists() for f in FILES)


def _lines(path: Path):
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                try:
                    yield number, json.loads(raw.strip())
                except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                    why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
                    raise DatabaseError(f"{path}:{number}: not a JSON line ({why}): {FIX}") from None


def validate(path: str | Path) -> int:
    """Check that every line of the database in ``path`` parses and every record names a workload
    the database has; returns the number of records. Missing files count as empty."""
    path = Path(path)
    workloads = records = 0
    wl_file, rec_file = (path / f for f in FILES)
    if wl_file.exists():
        for number, line in _lines(wl_file):
            if not (isinstance(line, list) and len(line) == 2):
                raise DatabaseError(f"{wl_file}:{number}: not a workload entry ([hash, module]): {FIX}")
            workloads += 1
    if rec_file.exists():
        for number, line in _lines(rec_file):
            if not (isinstance(line, list) and len(line) == 2 and isinstance(line[0], int)):
                raise DatabaseError(f"{rec_file}:{number}: not a tuning record ([workload, record]): {FIX}")
            if not 0 <= line[0] < workloads:
                raise DatabaseError(f"{rec_file}:{number}: names workload {line[0]}, but {wl_file.name} has "
                                    f"{workloads}: the two files do not belong together; {FIX}")
            records += 1
    return records


def open_database(path: str | Path, create: bool = True):
    """MetaSchedule's JSON database in ``path`` (created when missing unless ``create`` is False),
    checked first: a corrupt file is one error naming the file, the line and the fix."""
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    path = Path(path)
    if not create and not is_database(path):
        raise FileNotFoundError(f"{path}: not a tuning database (needs {' and '.join(FILES)})")
    validate(path)
    path.mkdir(parents=True, exist_ok=True)
    try:
        return JSONDatabase(work_dir=str(path), allow_missing=True)
    except Exception as e:  # noqa: BLE001 - TVM's loader: lines that parse but do not decode
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DatabaseError(f"{path}: TVM cannot load this tuning database ({last}): {FIX}") from None


def records_for(db, mod) -> int:
    """How many valid measured candidates the database holds for this workload (failed
    candidates are stored too, with no valid time, and are not counted)."""
    return len(valid_records(db, mod))


def valid_records(db, mod) -> list:
    if not db.has_workload(mod):
        return []
    return list(db.get_top_k(db.commit_workload(mod), 1 << 30))


def seed_record(records: list, seed: list):
    """Among a workload's records, the seeded default schedule's: the one with the heuristic's
    sampling decisions (``seed``, from ``defaults.decisions``); None when it was not measured."""
    from mobilec.schedules.defaults import decisions

    return next((r for r in records if decisions(r.trace) == seed), None)


def searched(records: list, seed: list) -> int:
    """Search trials among a workload's valid records (``valid_records``): what counts against a
    tuning budget (the seeded default schedule and failed candidates do not). Seeding stores one
    record per workload, with the heuristic's decisions; the search may sample those decisions
    again (small kernels have small spaces), so one record with them is the seed and any other is
    a trial."""
    return len(records) - int(seed_record(records, seed) is not None)


def target_label(target) -> str:
    """``"aarch64-linux-gnu (cpu cortex-a76)"`` for a TVM target or its JSON dict: what a record must
    match to apply to a build (kernels' TIR is the same for every CPU; their tuned schedules are not)."""
    attrs = target if isinstance(target, dict) else target.attrs
    kind = target.get("kind", "?") if isinstance(target, dict) else target.kind.name
    triple, cpu = str(attrs.get("mtriple", kind) or kind), str(attrs.get("mcpu", "") or "")
    return f"{triple} (cpu {cpu})" if cpu else triple


def copy_record(db, rec, run_secs=None) -> None:
    """Commit ``rec`` (from another database) to ``db``, with its own times or ``run_secs``."""
    from tvm.s_tir.meta_schedule.database import TuningRecord

    db.commit_tuning_record(TuningRecord(rec.trace, db.commit_workload(rec.workload.mod),
                                         rec.run_secs if run_secs is None else run_secs, rec.target, rec.args_info))


def for_target(path: str | Path, target):
    """The database in ``path`` restricted to the records tuned for ``target`` (TVM applies a
    record to any kernel of the same workload, whatever target it was measured on: a database of
    another device would otherwise be applied silently), its confirmed winners (``confirm.py``)
    first: a workload a tuning run confirmed gets that record, any other its fastest."""
    from tvm.s_tir.meta_schedule.database import OrderedUnionDatabase

    confirmed = Path(path) / CONFIRMED
    if is_database(confirmed):
        return OrderedUnionDatabase(_restricted(confirmed, target), _restricted(path, target))
    return _restricted(path, target)


def _restricted(path: str | Path, target):
    from tvm.s_tir.meta_schedule.database import MemoryDatabase

    db = open_database(path, create=False)
    ours = target_label(target)
    if targets_of(path, limit=None) in ([], [ours]):
        return db
    mem = MemoryDatabase()
    for rec in db.get_all_tuning_records():
        if target_label(rec.target) == ours:
            copy_record(mem, rec)
    return mem


def targets_of(path: str | Path, limit: Optional[int] = 1000) -> list[str]:
    """The distinct targets (``mtriple``/``mcpu``) the valid records of a database (among its
    first ``limit``) were tuned for; failed candidates (stored with a time of 1e10 s) are skipped."""
    seen: list[str] = []
    rec_file = Path(path) / FILES[1]
    if not rec_file.exists():
        return seen
    for number, line in _lines(rec_file):
        try:
            _, run_secs, target = line[1][:3]  # [workload, [trace, run_secs, target, args_info]]
            if not run_secs or min(float(t) for t in run_secs) >= 1e9:
                continue
            name = target_label(target)
        except (IndexError, KeyError, TypeError, AttributeError, ValueError):
            continue
        if name not in seen:
            seen.append(name)
        if limit is not None and number >= limit:
            break
    return seen


def swap_in(staging: Path, path: Path) -> None:
    """Move the folder ``staging`` (from ``tempfile.mkdtemp``) to ``path``, replacing what is there
    whole: a reader finds the old folder, none, or the new one, never a mix."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it private; a database is not
    if path.exists():
        old = staging.with_name(staging.name + "-old")
        os.replace(path, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(staging, path)


def merge(sources: Iterable[str | Path], output: str | Path) -> int:
    """Merge databases (e.g. from several phones of one kind) into ``output``; returns records added.
    Every source (and an existing output) is checked before anything is written, and the output
    is written beside itself and moved into place: a bad source leaves the output as it was.
    Confirmed winners (``CONFIRMED``) are not merged: they won a re-measurement on one device."""
    sources, output = [Path(s) for s in sources], Path(output)
    for src in sources:
        if not is_database(src):
            raise FileNotFoundError(f"{src}: not a tuning database (needs {' and '.join(FILES)})")
        validate(src)
    existing = is_database(output)
    if existing:
        validate(output)
    elif output.exists() and any((output / f).exists() for f in FILES):
        raise DatabaseError(f"{output}: holds only one of {' and '.join(FILES)}; give another -o or remove it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.merge-", dir=output.parent))
    try:
        if existing:  # the staged files start as copies, so the output's lines keep their places
            for name in FILES:
                shutil.copyfile(output / name, staging / name)
        out = open_database(staging)
        added = 0
        for src in sources:
            for rec in open_database(src, create=False).get_all_tuning_records():
                copy_record(out, rec)
                added += 1
        del out
        if not output.exists():
            swap_in(staging, output)  # the output appears whole or not at all
        else:
            # workloads first: the old records still point at the right (unmoved) workload lines
            # until the records file is replaced too
            for name in FILES:
                os.replace(staging / name, output / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return added
