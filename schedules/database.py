"""Tuning databases: MetaSchedule's JSON database, one directory per (target triple, cpu) under a
root, so databases from several devices and kinds live side by side and merge."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

FILES = ("database_workload.json", "database_tuning_record.json")


def database_dir(root: str | Path, triple: str, cpu: str) -> Path:
    """``root/<triple>-<cpu>``; a ``root`` that already holds the JSON files is used as it is."""
    root = Path(root)
    if all((root / f).exists() for f in FILES):
        return root
    return root / f"{triple}-{cpu}"


PRETUNED = Path(__file__).resolve().parent / "db"  # shipped, made by benchmarks/pretune.py


def pretuned(triple: str, cpu: str) -> Optional[Path]:
    """The database shipped with mobilec for this triple and cpu, if there is one."""
    path = PRETUNED / f"{triple}-{cpu}"
    return path if is_database(path) else None


def is_database(path: str | Path) -> bool:
    return all((Path(path) / f).exists() for f in FILES)


def open_database(path: str | Path):
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return JSONDatabase(work_dir=str(path), allow_missing=True)


def records_for(db, mod) -> int:
    """How many measured candidates the database holds for this workload."""
    if not db.has_workload(mod):
        return 0
    return len(db.get_top_k(db.commit_workload(mod), 1 << 30))


def merge(sources: Iterable[str | Path], output: str | Path) -> int:
    """Merge databases (e.g. from several phones of one kind) into ``output``; returns records added."""
    from tvm.s_tir.meta_schedule.database import TuningRecord

    out = open_database(output)
    added = 0
    for src in sources:
        if not is_database(src):
            raise FileNotFoundError(f"{src}: not a tuning database (needs {' and '.join(FILES)})")
        for rec in open_database(src).get_all_tuning_records():
            wl = out.commit_workload(rec.workload.mod)
            out.commit_tuning_record(TuningRecord(rec.trace, wl, rec.run_secs, rec.target, rec.args_info))
            added += 1
    return added
