"""The main job on a built-in model: export to ONNX, compile, load with the thin runtime, compare
the output and the latency with onnxruntime on the same input and the same number of threads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def run(model: str, workdir: Path, target: str = "host", threads: Optional[int] = None,
        cores: Optional[str] = None, console=None, warmup: int = 10, rounds: int = 10, block: int = 5) -> int:
    from rich.console import Console

    # the compiler first: once the thin runtime has loaded TVM's runtime library alone, it cannot
    from mobilec.compiler import CompileConfig, compile_model
    from mobilec.frontends import export_model
    from mobilec.present import onnxruntime_session
    from mobilec.runtime import load, random_feeds
    from mobilec.runtime.threads import plan, plural
    from mobilec.runtime.timing import interleaved

    plan(threads, cores)  # a bad --threads/--cores fails now, not after a minute of compiling
    console = console or Console()
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path, so_path = workdir / f"{model}.onnx", workdir / f"{model}.so"
    with console.status(f"exporting {model} to ONNX"):
        exp = export_model(model, onnx_path)
    console.print(f"1. exported {onnx_path}: onnxruntime vs PyTorch max abs error {exp.max_abs_error:.2g}",
                  soft_wrap=True)
    with console.status(f"compiling for {target} (about a minute)"):
        res = compile_model(onnx_path, so_path, CompileConfig(target=target))
    totals = ", ".join(f"{k} {v}" for k, v in res.report.totals.items())
    console.print(f"2. compiled {so_path} in {res.seconds:.1f} s for {res.manifest.triple}; fused: {totals}; "
                  "default schedules, untuned (`mobilec tune` searches for faster ones)", soft_wrap=True)
    module = load(so_path, threads=threads, cores=cores)
    feeds = random_feeds(module)
    (name, x), = feeds.items()
    sess = onnxruntime_session(str(onnx_path), module.threads)
    ref = sess.run(None, {name: x})[0]
    err = float(np.abs(module(x) - ref).max())
    console.print(f"3. ran it with mobilec.runtime: max abs difference from onnxruntime {err:.2g}", soft_wrap=True)
    t = interleaved({"mobilec": lambda: module.run({name: x}), "onnxruntime": lambda: sess.run(None, {name: x})},
                    warmup=warmup, rounds=rounds, block=block)
    mine, theirs = t["mobilec"], t["onnxruntime"]
    console.print(f"4. latency on {plural(module.threads)}, median of {rounds} alternating blocks of {block} calls: "
                  f"mobilec {mine['median_ms']:.1f} ms ({mine['min_ms']:.1f}-{mine['max_ms']:.1f}), "
                  f"onnxruntime {theirs['median_ms']:.1f} ms ({theirs['min_ms']:.1f}-{theirs['max_ms']:.1f}), "
                  f"ratio {mine['median_ms'] / theirs['median_ms']:.2f}x "
                  "(untuned)", soft_wrap=True)
    return 0 if err < 1e-3 else 1
