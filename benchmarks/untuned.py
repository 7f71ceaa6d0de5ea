"""Untuned compile time and latency of mobilec against onnxruntime, fused against unfused.

    .venv/bin/python benchmarks/untuned.py [--models mobilenet_v3_large mobilenet_v3_small] [--repeat 30]

Everything is measured in this one run on this host, same seeded input, onnxruntime with the same
thread count as the compiled target's num-cores. Prints a table of medians and ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mobilec.compiler import CompileConfig, compile_model
from mobilec.frontends import export_model
from mobilec.runtime import load
from mobilec.present import onnxruntime_latency


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["mobilenet_v3_large", "mobilenet_v3_small"])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            onnx_path = Path(tmp) / f"{name}.onnx"
            export_model(name, onnx_path)
            results = {}
            for fuse in (True, False):
                t = time.perf_counter()
                res = compile_model(onnx_path, Path(tmp) / f"{name}_{fuse}.so", CompileConfig(fuse=fuse))
                compile_s = time.perf_counter() - t
                m = load(res.library)
                x = np.random.default_rng(0).standard_normal(m.inputs[0]["shape"]).astype("float32")
                lat = m.benchmark(warmup=args.warmup, repeat=args.repeat, feeds={"input": x})
                results[fuse] = (compile_s, lat["median_ms"])
            threads = int(res.manifest.target["num-cores"])
            ort = onnxruntime_latency(str(onnx_path), {"input": x}, args.warmup, args.repeat, threads)["median_ms"]
            for fuse in (True, False):
                c, ms = results[fuse]
                rows.append((name, "fused" if fuse else "unfused", c, ms, ort, ms / ort))
    print(f"{'model':24s} {'pipeline':8s} {'compile s':>9s} {'mobilec ms':>10s} {'ort ms':>8s} {'ratio':>7s}")
    for name, kind, c, ms, ort, ratio in rows:
        print(f"{name:24s} {kind:8s} {c:9.1f} {ms:10.2f} {ort:8.2f} {ratio:6.1f}x")


if __name__ == "__main__":
    main()
