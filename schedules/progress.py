"""Tuning progress: on a terminal a live table (rich) of per task trials and best latency, overall
estimated latency and ETA; off a terminal (a log, a pipe) one plain line per round instead. Also
the final per-task table and the PNG plot of estimated latency against trials."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from mobilec import stops


@dataclass
class TaskStats:
    name: str                         # as a person reads it: "pw 56x56 24->72 +relu"
    weight: float
    budget: int
    trials: int = 0
    default_ms: Optional[float] = None  # the default schedule, measured by the same runner (seeded)
    best_ms: Optional[float] = None
    errors: int = 0
    task: str = ""                    # TVM's function name (the per-task logs are named by it)
    stale: int = 0                    # trials since the task's best last improved
    converged: bool = False           # its best stopped moving (``Progress.patience``): no more rounds

    @property
    def tuned_ms(self) -> Optional[float]:
        """What a build with the database gets: the faster of the default and the best searched."""
        known = [v for v in (self.default_ms, self.best_ms) if v is not None]
        return min(known) if known else None


@dataclass
class Progress:
    tasks: list[TaskStats]
    budget: int
    start: float = field(default_factory=time.time)
    history: list[tuple[int, float]] = field(default_factory=list)  # (trials, estimated ms)
    elapsed: list[float] = field(default_factory=list)  # seconds since the start, per history entry
    lost: Optional[str] = None  # set when a whole round failed to reach the device
    first_error: Optional[str] = None  # the first failed candidate's error (last line)
    all_failed: bool = False    # set when every task had a round and every candidate failed
    deadline: Optional[float] = None  # time.time() after which no new round starts (--minutes)
    out_of_time: bool = False   # set when the search stopped at the deadline
    rounds: int = 0
    _all_measured_at: int = 0   # index into history from which every task has a measurement
    default_estimate_ms: Optional[float] = None  # set by start_from: the estimate with the defaults only
    closing: float = 0.0        # the measurements after the search (confirm.py) per contested task,
    #                             in seed-equivalents
    seed_pace: Optional[float] = None  # seconds per default schedule built and measured (seeding)
    _round_at: Optional[float] = None  # when the last round ended
    _fastest: Optional[float] = None   # the fastest round's seconds per candidate, the first aside
    patience: int = 0           # trials without an improvement after which a task has converged (0: never)
    improved: float = 0.01      # an improvement: a best faster by more than this fraction
    bounded: bool = True        # False: the time budget alone bounds the trials (``budget`` is no limit)

    def past_deadline(self) -> bool:
        """The time budget is spent, keeping time for the closing measurements: at seeding's pace
        (a build and a run each), or, in a run that seeded nothing, the search's fastest round's."""
        if self.deadline is None:
            return False
        pace = self.seed_pace or self._fastest or 0.0
        return time.time() + pace * self.closing * self.contested() >= self.deadline

    def contested(self) -> int:
        """Tasks the confirmation will measure again: a searched candidate measured faster than the
        default schedule (or there is no default to hold)."""
        return sum(1 for t in self.tasks
                   if t.best_ms is not None and (t.default_ms is None or t.best_ms < t.default_ms))

    @property
    def trials(self) -> int:
        return sum(t.trials for t in self.tasks)

    def estimate_ms(self) -> float:
        """Weighted sum of each tuned kernel's latency as a build with the database gets it: the
        best searched candidate or the default schedule, whichever measured faster."""
        return sum(t.weight * t.tuned_ms for t in self.tasks if t.tuned_ms is not None)

    @property
    def errors(self) -> int:
        return sum(t.errors for t in self.tasks)

    def note_error(self, msg: Optional[str]) -> None:
        if msg and self.first_error is None:
            self.first_error = brief(msg)

    def record(self, task_id: int, latencies_ms: list[Optional[float]]) -> None:
        t = self.tasks[task_id]
        self.rounds += 1
        now = time.time()
        if self._round_at is not None and latencies_ms:  # the first round also set the search up
            per = (now - self._round_at) / len(latencies_ms)
            self._fastest = per if self._fastest is None else min(self._fastest, per)
        self._round_at = now
        ok = [v for v in latencies_ms if v is not None]
        t.trials += len(latencies_ms)
        t.errors += len(latencies_ms) - len(ok)
        before = t.tuned_ms
        if ok:
            best = min(ok)
            t.best_ms = best if t.best_ms is None else min(t.best_ms, best)
        if before is None or (t.tuned_ms is not None and t.tuned_ms < before * (1 - self.improved)):
            t.stale = 0
        else:
            t.stale += len(latencies_ms)
        t.converged = bool(self.patience) and t.stale >= self.patience
        if any(x.tuned_ms is None for x in self.tasks):
            self._all_measured_at = len(self.history) + 1
        self.history.append((self.trials, self.estimate_ms()))
        self.elapsed.append(now - self.start)

    def start_from(self, default_ms: dict[str, Optional[float]]) -> None:
        """The default schedules' measurements (by TVM task name), before any search round: the
        estimate, and the tuning curve, start from what a build without the database gets."""
        for t in self.tasks:
            t.default_ms = default_ms.get(t.task)
        if all(t.tuned_ms is not None for t in self.tasks):
            self.default_estimate_ms = self.estimate_ms()
            self.history.append((0, self.default_estimate_ms))
            self.elapsed.append(time.time() - self.start)

    def all_converged(self) -> bool:
        return bool(self.tasks) and all(t.converged for t in self.tasks)

    def _of_budget(self, done: int, budget: int) -> str:
        return f"{done}/{budget}" if self.bounded else f"{done}"

    def within(self, frac: float = 0.10) -> Optional[tuple[int, float]]:
        """(trials, seconds since the start) at which the estimate came within ``frac`` of the final
        one (it only falls: the best so far), once every task had a measurement; None before that."""
        if not self.history or not self.tasks:
            return None
        final = self.history[-1][1]
        for i, (trials, est) in enumerate(self.history):
            if i >= self._all_measured_at and est <= final * (1 + frac):
                return trials, self.elapsed[i]
        return None

    def render(self):
        from rich.table import Table

        elapsed = time.time() - self.start
        done = self.trials
        if self.bounded:
            eta = elapsed / done * (self.budget - done) if done else float("nan")
        else:
            eta = max(0.0, self.deadline - time.time()) if self.deadline else float("nan")
        table = Table(title=f"tuning: {self._of_budget(done, self.budget)} trials, estimated {self.estimate_ms():.3f} "
                            f"ms for the tuned kernels, {elapsed:.0f} s elapsed, ETA {eta:.0f} s")
        for col in ("task", "weight", "trials", "best ms"):
            table.add_column(col, justify="left" if col == "task" else "right")
        for t in self.tasks:
            table.add_row(t.name, f"{t.weight:g}", self._of_budget(t.trials, t.budget) + " done" * t.converged,
                          "-" if t.best_ms is None else f"{t.best_ms:.4f}")
        return table

    def line(self, task_id: int) -> str:
        """One plain line for the round just recorded for ``task_id`` (logs and pipes)."""
        t = self.tasks[task_id]
        elapsed = time.time() - self.start
        best = "-" if t.best_ms is None else f"{t.best_ms:.4f} ms"
        failed = f", {t.errors} failed" if t.errors else ""
        done = f", converged (best unchanged for {t.stale} trials)" if t.converged else ""
        return (f"round {self.rounds}: {t.name}: {self._of_budget(t.trials, t.budget)} trials, best {best}{failed}"
                f"{done}; all tasks {self._of_budget(self.trials, self.budget)} trials, estimated "
                f"{self.estimate_ms():.3f} ms, {elapsed:.0f} s")

    SUMMARY = ["task", "trials", "default ms", "best searched ms", "vs default"]

    def summary_rows(self) -> list[list[str]]:
        """One row per task (``SUMMARY``): "vs default" is the default schedule's time over the best
        the search found, above 1.00x where the search beat it."""
        def ms(v: Optional[float]) -> str:
            return "-" if v is None else f"{v:.4f}"

        return [[t.name, str(t.trials), ms(t.default_ms), ms(t.best_ms),
                 f"{t.default_ms / t.best_ms:.2f}x" if t.best_ms and t.default_ms else "-"] for t in self.tasks]

    def beat_default(self) -> int:
        """Tasks where a searched candidate measured faster than the default schedule."""
        return sum(1 for t in self.tasks if t.best_ms and t.default_ms and t.best_ms < t.default_ms)

    def plot(self, path: Path) -> Optional[Path]:
        if not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs, ys = zip(*self.history)
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(xs, ys, marker=".")
        ax.set_xlabel("trials")
        ax.set_ylabel("estimated latency of tuned kernels (ms)")
        ax.set_title("mobilec tune")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def _is_rpc_failure(msg: str) -> bool:
    """The device could not be reached (tracker, session, connection), as opposed to a device that
    answered with an error of its own (e.g. it cannot load code built for another CPU)."""
    if "Error caught from RPC call" in msg:
        return False
    return any(k in msg for k in ("RPCError", "no device registered", "no free", "cannot reach the RPC tracker",
                                  "Connection", "connection", "Socket", "socket"))


def brief(msg: str) -> str:
    """The line of an error that says what went wrong (the last of a traceback), shortened."""
    lines = [l.strip() for l in str(msg).strip().splitlines() if l.strip()]
    return (lines[-1] if lines else str(msg))[:300]


def mean_ms(run_secs) -> float:
    """A measurement's latency: the mean of its runs (what MetaSchedule ranks by), in ms."""
    secs = [float(s) for s in run_secs]
    return sum(secs) / len(secs) * 1e3


def _latency_ms(result) -> Optional[float]:
    if result.error_msg is not None or not result.run_secs:
        return None
    return mean_ms(result.run_secs)


@derived_object
class ProgressCallback(PyMeasureCallback):
    """Feeds every measured batch into ``Progress`` and refreshes the live display, or hands one
    plain line per round to ``echo``. Stops the search (by raising, which ends MetaSchedule's loop)
    when the device is gone, when every task had a round and no candidate ran at all, or after the
    round that passed the time budget or in which a stop (Ctrl-C, SIGTERM) arrived (its records
    are in the database by then: the database callbacks come first)."""

    def __init__(self, progress: Progress, live=None, echo: Optional[Callable[[str], None]] = None):
        super().__init__()
        self.progress, self.live, self.echo = progress, live, echo

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        p = self.progress
        p.record(task_id, [_latency_ms(r) for r in runner_results])
        for b, r in zip(builder_results, runner_results):
            p.note_error(b.error_msg or r.error_msg)
        errors = [r.error_msg for r in runner_results if r.error_msg]
        if runner_results and len(errors) == len(runner_results) and all(_is_rpc_failure(e) for e in errors):
            p.lost = brief(errors[0])[:200]
            raise RuntimeError(f"device lost: {p.lost}")  # stops the tuning loop
        if self.live is not None:
            self.live.update(p.render())
        elif self.echo is not None:
            self.echo(p.line(task_id))
        if all(t.trials for t in p.tasks) and p.errors == p.trials:
            p.all_failed = True
            raise RuntimeError(f"every candidate failed: {p.first_error}")  # more rounds would too
        if p.past_deadline():
            p.out_of_time = True
            raise RuntimeError("time budget spent")  # ends MetaSchedule's loop; not an error
        if stops.pending():  # Ctrl-C or SIGTERM held while TVM ran: stop here, raised once back in Python
            raise RuntimeError("stopped")
