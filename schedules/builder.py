"""A MetaSchedule builder whose worker processes live for the whole tuning run.

MetaSchedule's LocalBuilder starts a fresh worker pool for every batch and each worker imports
``tvm.s_tir.tensor_intrin`` (tens of seconds on a 2-core host), so most of a batch's time is
imports. Here one worker per core (TVM's ``PopenPoolExecutor``) is started once and builds
candidates until the run ends: lowering, code generation and linking run on every core. The
tensor intrinsics are not imported: safe for plain NEON/AVX2 schedules, which is what mobilec's
targets use (no dotprod/i8mm tensorisation in fp32).

**A build has a time limit** (``TuneOptions.build_limit``, ``--build-limit``). Some samples of
a search space (an unrolled depthwise 5x5 with a SiLU epilogue) keep LLVM busy for minutes; such
a candidate is a failed one ("build took longer than ..."), its worker is killed and another one
started, and the search goes on. Workers ignore Ctrl-C: the run stops after its round and closes them.

Candidates are written under ``workdir``, a private directory of the tuning run that the run
removes when it ends (also on an error or Ctrl-C); each one is removed as soon as it is measured.
"""

from __future__ import annotations

import os
import signal
import tempfile
from typing import Callable, Optional

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder

from mobilec import stops
from mobilec.schedules.lowering import TIR_PIPELINE


def as_candidate(mod):
    """A scheduled kernel as the tuning run measures it: its weights taken as the schedule lays
    them out (the layout-rewrite block dropped, the parameter in the rewritten layout)."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)


def build_candidate(mod, target):
    """An ``as_candidate`` kernel lowered by mobilec's TIR pipeline, as the model's build lowers it."""
    from tvm.driver import build as tvm_build

    with stops.inside_tvm():  # TVM calls mobilec's Python TIR passes
        return tvm_build(mod, target=target, pipeline=TIR_PIPELINE)


RECYCLE_AFTER = 256  # builds per worker process before a fresh one (TVM's workers leak memory)


def _quiet_worker() -> None:
    """A worker's initializer: Ctrl-C is for the tuning run, which closes its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _build_and_export(mod, target, fcompile: Callable, workdir: Optional[str]) -> str:
    """One candidate, in a worker: lowered (``build_candidate``) and linked into a library."""
    lib = build_candidate(as_candidate(mod), target)
    path = os.path.join(tempfile.mkdtemp(prefix="mobilec-cand-", dir=workdir), "cand.so")
    lib.export_library(path, fcompile=fcompile)
    return path


@derived_object
class PooledBuilder(PyBuilder):
    """Builds candidates in ``workers`` processes (default: one per core), each build limited to
    ``limit_s`` seconds. ``close()`` stops the workers; a later ``build`` starts new ones."""

    def __init__(self, fcompile: Callable, workdir: Optional[str], limit_s: float, workers: Optional[int] = None):
        super().__init__()
        self.fcompile = fcompile
        self.workdir = workdir  # None: the system's temporary directory (the caller cleans up)
        self.workers = workers or os.cpu_count() or 1
        self.limit_s = limit_s
        self._pool = None

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

        if self._pool is None:
            self._pool = PopenPoolExecutor(max_workers=self.workers, timeout=self.limit_s,
                                           initializer=_quiet_worker, maximum_process_uses=RECYCLE_AFTER)
        jobs = [(item.mod, item.target, self.fcompile, self.workdir) for item in build_inputs]
        results = []
        for done in self._pool.map_with_error_catching(lambda job: _build_and_export(*job), jobs):
            if done.status == StatusKind.COMPLETE:
                results.append(BuilderResult(done.value, None))
            elif done.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(None, f"build took longer than {self.limit_s:g} s (stopped); the "
                                                   f"search goes on without this candidate"))
            else:  # the worker's traceback: a failed candidate is a result, not a crash
                results.append(BuilderResult(None, f"{type(done.value).__name__}: {done.value}"))
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
