"""Make the pre-tuned database shipped in schedules/db for this machine kind (x86_64, AVX2).

    .venv/bin/python benchmarks/pretune.py [--trials-large 640] [--trials-small 320] [--db schedules/db]

Tunes the convolution kernels of mobilenet_v3_large and mobilenet_v3_small (224x224, batch 1)
on this machine with MetaSchedule (XGBoost cost model, local runner) into the database root,
then prints tuned against untuned against onnxruntime, measured in the same run. Rerunning with a
larger budget continues where the database stopped.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from mobilec.compiler import CompileConfig, TuneConfig, compile_model, tune_model
from mobilec.frontends import export_model
from mobilec.runtime import load
from mobilec.present import onnxruntime_latency
from mobilec.schedules.tuning import TuneOptions

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials-large", type=int, default=640)
    ap.add_argument("--trials-small", type=int, default=320)
    ap.add_argument("--per-round", type=int, default=32)
    ap.add_argument("--db", default=str(ROOT / "schedules" / "db"))
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    console = Console()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, trials in (("mobilenet_v3_small", args.trials_small), ("mobilenet_v3_large", args.trials_large)):
            onnx_path = Path(tmp) / f"{name}.onnx"
            export_model(name, onnx_path)
            res = tune_model(onnx_path, TuneConfig(db=args.db, options=TuneOptions(trials=trials, per_round=args.per_round)),
                             console=console)
            console.print(f"{name}: {res.seeded} default schedules seeded, {res.measured} new trials in {res.seconds:.0f} s -> {res.database}; "
                          f"estimate within 10% of its final value after {res.progress.trials_to_within(0.10)} trials")
            x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype("float32")
            lat = {}
            for label, db in (("untuned", None), ("tuned", args.db)):
                lib = compile_model(onnx_path, Path(tmp) / f"{name}_{label}.so", CompileConfig(tuning_db=db)).library
                lat[label] = load(lib).benchmark(warmup=5, repeat=args.repeat, feeds={"input": x})["median_ms"]
            ort = onnxruntime_latency(str(onnx_path), {"input": x}, 5, args.repeat, 2)["median_ms"]
            rows.append((name, lat["untuned"], lat["tuned"], ort))
    print(f"{'model':22s} {'untuned ms':>10s} {'tuned ms':>9s} {'ort ms':>7s} {'tuned/ort':>9s}")
    for name, u, t, o in rows:
        print(f"{name:22s} {u:10.2f} {t:9.2f} {o:7.2f} {t / o:8.2f}x")


if __name__ == "__main__":
    main()
