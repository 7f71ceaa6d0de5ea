"""The main job on a built-in model: export to ONNX, compile, load with the thin runtime, compare
the output and the latency with onnxruntime on the same input."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def run(model: str, workdir: Path, target: str = "host") -> int:
    from rich.console import Console

    from mobilec.compiler import CompileConfig, compile_model
    from mobilec.frontends import export_model
    from mobilec.runtime import load
    from mobilec.runtime.present import onnxruntime_latency

    console = Console()
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path, so_path = workdir / f"{model}.onnx", workdir / f"{model}.so"
    with console.status(f"exporting {model} to ONNX"):
        exp = export_model(model, onnx_path)
    console.print(f"1. exported {onnx_path}: onnxruntime vs PyTorch max abs error {exp.max_abs_error:.2g}")
    from mobilec.compiler import resolve
    from mobilec.schedules import pretuned

    resolved = resolve(target)
    db = pretuned(resolved.triple, resolved.cpu)  # the shipped database, where the target matches
    with console.status(f"compiling for {target} (about a minute)"):
        res = compile_model(onnx_path, so_path, CompileConfig(target=target, tuning_db=str(db) if db else None))
    totals = ", ".join(f"{k} {v}" for k, v in res.report.totals.items())
    tuned = (f"{res.manifest.tuned_kernels} kernels from the pre-tuned database {db}" if db
             else "no pre-tuned database for this target: untuned kernels (see `mobilec tune`)")
    console.print(f"2. compiled {so_path} in {res.seconds:.1f} s for {res.manifest.triple}; fused: {totals}; {tuned}")
    module = load(so_path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(module.inputs[0]["shape"]).astype("float32")
    import onnxruntime as ort

    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    err = float(np.abs(module(x) - ref).max())
    console.print(f"3. ran it with mobilec.runtime: max abs difference from onnxruntime {err:.2g}")
    threads = int(res.manifest.target.get("num-cores", 1))
    mine = module.benchmark(warmup=3, repeat=20)
    theirs = onnxruntime_latency(str(onnx_path), {"input": x}, 3, 20, threads)
    console.print(f"4. latency (median of 20, {threads} threads): mobilec {mine['median_ms']:.1f} ms, "
                  f"onnxruntime {theirs['median_ms']:.1f} ms, ratio {mine['median_ms'] / theirs['median_ms']:.2f}x "
                  f"({'tuned' if res.manifest.tuning_db else 'untuned'})")
    return 0 if err < 1e-3 else 1
