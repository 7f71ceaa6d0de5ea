"""Import time and resident memory of the thin runtime path against importing TVM's compiler.

    .venv/bin/python benchmarks/runtime_footprint.py [--library model.so]

Each path runs in a fresh process (median of 5): `import mobilec.runtime` + `load` (timed; TVM is
imported there) + one run (in the RSS), and `import tvm` + `tvm.relax` with the compiler library
(what an app would pay without the thin runtime, before loading anything).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUNTIME = r"""
import time, json, resource, sys
t = time.perf_counter()
import mobilec.runtime as mr
import numpy as np
m = mr.load(sys.argv[1])  # TVM is imported here, on first use
imported = time.perf_counter() - t
m(np.zeros(m.inputs[0]["shape"], dtype="float32"))
print(json.dumps({"import_s": imported, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
COMPILER = r"""
import time, json, resource
t = time.perf_counter()
import tvm, tvm.relax
imported = time.perf_counter() - t
print(json.dumps({"import_s": imported, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(code: str, *argv: str, n: int = 5) -> dict:
    runs = [json.loads(subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1]) for _ in range(n)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--library")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lib = args.library
        if lib is None:
            from mobilec.compiler import compile_model
            from mobilec.frontends import export_model

            export_model("mobilenet_v3_small", Path(tmp) / "s.onnx")
            lib = str(compile_model(Path(tmp) / "s.onnx", Path(tmp) / "s.so").library)
        rt, cc = measure(RUNTIME, lib), measure(COMPILER)
    print(f"{'path':36s} {'import s':>9s} {'max RSS MB':>11s}")
    print(f"{'mobilec.runtime (import+load; +run)':36s} {rt['import_s']:9.2f} {rt['rss_mb']:11.0f}")
    print(f"{'import tvm + tvm.relax (compiler)':36s} {cc['import_s']:9.2f} {cc['rss_mb']:11.0f}")
    print(f"ratio: import {cc['import_s'] / rt['import_s']:.1f}x, memory {cc['rss_mb'] / rt['rss_mb']:.1f}x")


if __name__ == "__main__":
    main()
