"""Never slower, by measurement: at the end of ``mobilec tune`` the model is built with the tuning
database and without it, and both are timed on the same device (the one tuning measured on); the
result is kept beside the database in ``verdicts.json``, one entry per model. ``compile
--tuning-db`` reads it: a database measured to make this model slower is not applied (and the
build says so) unless the user insists (``force_tuning_db`` / ``--force-tuning-db``).

A kernel-by-kernel database can lose as a whole: candidates are timed alone with cold caches,
while inside the network each kernel finds the previous one's output in cache, and a kernel
faster alone can be slower in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from mobilec.runtime.timing import alternating
from mobilec.files import write_atomic

VERDICTS = "verdicts.json"
TIE = 0.03  # within 3% the two builds are a tie (block medians move that much from run to run): applied
log = logging.getLogger("mobilec.compiler")


@dataclass
class Verdict:
    model: str          # where the model came from (a path, or "<ModelProto>")
    key: str            # the imported model, its input shapes and the build flags (``model_key``)
    untuned_ms: float   # median latency built without the database
    tuned_ms: float     # median latency built with it
    device: str         # where both were timed
    threads: int
    measured_at: str

    @property
    def ratio(self) -> float:
        return self.tuned_ms / self.untuned_ms

    @property
    def faster(self) -> bool:
        """Not slower: faster, or a tie within measurement noise (``TIE``)."""
        return self.tuned_ms <= self.untuned_ms * (1 + TIE)

    def describe(self) -> str:
        return (f"{self.model} on {self.device} ({self.threads} threads): {self.tuned_ms:.2f} ms with the database, "
                f"{self.untuned_ms:.2f} ms without ({self.ratio:.2f}x)")


def model_key(imported, layout: str, fuse: bool, default_schedules: bool) -> str:
    """The same model built the same way: the imported graph (its input shapes fixed) and the flags
    that change its kernels."""
    h = hashlib.sha256(imported.proto.SerializeToString())
    h.update(f"|layout={layout}|fuse={fuse}|defaults={default_schedules}".encode())
    return h.hexdigest()


def lookup(db_dir: str | Path, key: str) -> Optional[Verdict]:
    path = Path(db_dir) / VERDICTS
    try:
        entry = json.loads(path.read_text()).get(key)
        return Verdict(**entry) if entry else None
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, AttributeError) as e:  # unreadable: as if never measured, but said
        log.warning("warning: %s is unreadable (%s); the database is applied unmeasured", path, e)
        return None


def record(db_dir: str | Path, verdict: Verdict) -> Path:
    path = Path(db_dir) / VERDICTS
    try:
        entries = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        entries = {}
    entries[verdict.key] = asdict(verdict)
    return write_atomic(path, json.dumps(entries, indent=2) + "\n")


def time_alternately(modules: dict[str, object], rounds: int = 4, block: int = 5, statistic: str = "median_ms",
                     min_seconds: float = 0.0) -> dict[str, float]:
    """Each module's ``statistic`` of its block medians (``runtime.timing.alternating``: the median,
    or ``quiet_ms``), each block of ``block`` runs timed where the model runs (``Module.benchmark``:
    on the device over RPC)."""
    for module in modules.values():
        module.benchmark(warmup=3, repeat=1)
    timed = alternating({name: (lambda m=m: [m.benchmark(warmup=1, repeat=block)["median_ms"]])
                         for name, m in modules.items()}, rounds, min_seconds)
    return {name: t[statistic] for name, t in timed.items()}


def measure(source: str, key: str, untuned: Path, tuned: Path, open_device: Callable[[], object],
            device: str) -> Verdict:
    """Time the model built without and with the database (``untuned``, ``tuned``) on the device
    ``open_device()`` returns (``mobilec.runtime`` or a ``Remote``)."""
    where = open_device()
    modules = {"untuned": where.load(untuned), "tuned": where.load(tuned)}
    ms = time_alternately(modules)
    threads = modules["tuned"].threads
    return Verdict(model=source, key=key, untuned_ms=round(ms["untuned"], 4), tuned_ms=round(ms["tuned"], 4),
                   device=device, threads=int(threads or 0), measured_at=time.strftime("%Y-%m-%d %H:%M:%S"))
