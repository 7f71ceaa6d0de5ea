"""Live tuning progress (rich): per task trials, best latency; overall estimated latency, ETA.
Also the final per-task table and the PNG plot of estimated latency against trials."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback


@dataclass
class TaskStats:
    name: str
    weight: float
    budget: int
    trials: int = 0
    first_ms: Optional[float] = None  # best of the first measured round
    best_ms: Optional[float] = None
    errors: int = 0


@dataclass
class Progress:
    tasks: list[TaskStats]
    budget: int
    start: float = field(default_factory=time.time)
    history: list[tuple[int, float]] = field(default_factory=list)  # (trials, estimated ms)
    lost: Optional[str] = None  # set when a whole round failed to reach the device
    _all_measured_at: int = 0   # index into history from which every task has a measurement

    @property
    def trials(self) -> int:
        return sum(t.trials for t in self.tasks)

    def estimate_ms(self) -> float:
        """Weighted sum of each tuned kernel's best latency (what the tuned tasks cost per inference)."""
        return sum(t.weight * t.best_ms for t in self.tasks if t.best_ms is not None)

    def record(self, task_id: int, latencies_ms: list[Optional[float]]) -> None:
        t = self.tasks[task_id]
        ok = [v for v in latencies_ms if v is not None]
        t.trials += len(latencies_ms)
        t.errors += len(latencies_ms) - len(ok)
        if ok:
            best = min(ok)
            t.first_ms = best if t.first_ms is None else t.first_ms
            t.best_ms = best if t.best_ms is None else min(t.best_ms, best)
        if any(x.best_ms is None for x in self.tasks):
            self._all_measured_at = len(self.history) + 1
        self.history.append((self.trials, self.estimate_ms()))

    def trials_to_within(self, frac: float = 0.10) -> Optional[int]:
        """Trials after which the estimate stayed within ``frac`` of the final one, counted from the
        point where every task had a measurement (before that the sum is incomplete)."""
        n_tasks = len(self.tasks)
        if not self.history or n_tasks == 0:
            return None
        final = self.history[-1][1]
        complete = [(t, est) for i, (t, est) in enumerate(self.history) if i >= self._all_measured_at]
        for trials, est in complete:
            if est <= final * (1 + frac):
                return trials
        return None

    def render(self):
        from rich.table import Table

        elapsed = time.time() - self.start
        done = self.trials
        eta = elapsed / done * (self.budget - done) if done else float("nan")
        table = Table(title=f"tuning: {done}/{self.budget} trials, estimated {self.estimate_ms():.3f} ms "
                            f"for the tuned kernels, {elapsed:.0f} s elapsed, ETA {eta:.0f} s")
        for col in ("task", "weight", "trials", "best ms"):
            table.add_column(col, justify="left" if col == "task" else "right")
        for t in self.tasks:
            table.add_row(t.name, f"{t.weight:g}", f"{t.trials}/{t.budget}",
                          "-" if t.best_ms is None else f"{t.best_ms:.4f}")
        return table

    def summary_rows(self) -> list[list[str]]:
        rows = []
        for t in self.tasks:
            speed = f"{t.first_ms / t.best_ms:.2f}x" if t.best_ms and t.first_ms else "-"
            rows.append([t.name, str(t.trials), "-" if t.first_ms is None else f"{t.first_ms:.4f}",
                         "-" if t.best_ms is None else f"{t.best_ms:.4f}", speed])
        return rows

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
    return any(k in msg for k in ("RPCError", "no device registered", "no free", "cannot reach the RPC tracker",
                                  "Connection", "connection", "Socket", "socket"))


def _latency_ms(result) -> Optional[float]:
    if result.error_msg is not None or not result.run_secs:
        return None
    secs = [float(s) for s in result.run_secs]
    return sum(secs) / len(secs) * 1e3


@derived_object
class ProgressCallback(PyMeasureCallback):
    """Feeds every measured batch into ``Progress`` and refreshes the live display."""

    def __init__(self, progress: Progress, live=None):
        super().__init__()
        self.progress, self.live = progress, live

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        self.progress.record(task_id, [_latency_ms(r) for r in runner_results])
        errors = [r.error_msg for r in runner_results if r.error_msg]
        if runner_results and len(errors) == len(runner_results) and all(_is_rpc_failure(e) for e in errors):
            self.progress.lost = errors[0].strip().splitlines()[-1][:200]
            raise RuntimeError(f"device lost: {self.progress.lost}")  # stops the tuning loop
        if self.live is not None:
            self.live.update(self.progress.render())
