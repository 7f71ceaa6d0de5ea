"""A MetaSchedule builder that compiles candidates in this process.

MetaSchedule's LocalBuilder starts a fresh worker pool for every batch and each worker imports
``tvm.s_tir.tensor_intrin`` (tens of seconds on a 2-core host), so most of a batch's time is
imports. Building here costs only the build; the libraries are written and linked in parallel. The tensor intrinsics are not imported:
safe for plain NEON/AVX2 schedules, which is what mobilec's targets use (no dotprod/i8mm
tensorisation in fp32).

Candidates are written under ``workdir``, a private directory of the tuning run that the run
removes when it ends (also on an error or Ctrl-C); each one is removed as soon as it is measured.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
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


@derived_object
class InProcessBuilder(PyBuilder):
    def __init__(self, fcompile: Callable, workdir: Optional[str] = None, workers: Optional[int] = None):
        super().__init__()
        self.fcompile = fcompile
        self.workdir = workdir  # None: the system's temporary directory (the caller cleans up)
        self.workers = workers or os.cpu_count() or 1

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        """TVM's lowering and code generation one candidate at a time (TVM's passes are not meant to
        run concurrently in one process); writing and linking each shared library, a compiler
        subprocess, on every core."""
        def export(lib) -> BuilderResult:
            try:
                path = os.path.join(tempfile.mkdtemp(prefix="mobilec-cand-", dir=self.workdir), "cand.so")
                lib.export_library(path, fcompile=self.fcompile)
                return BuilderResult(path, None)
            except Exception as e:  # noqa: BLE001 - a failed candidate is a result, not a crash
                return BuilderResult(None, f"{type(e).__name__}: {e}")

        built = []
        for item in build_inputs:
            try:
                built.append(build_candidate(as_candidate(item.mod), item.target))
            except Exception as e:  # noqa: BLE001
                built.append(BuilderResult(None, f"{type(e).__name__}: {e}"))
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            exported = {i: pool.submit(export, lib) for i, lib in enumerate(built)
                        if not isinstance(lib, BuilderResult)}
            return [exported[i].result() if i in exported else b for i, b in enumerate(built)]
