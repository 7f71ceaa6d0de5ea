"""mobilec against onnxruntime and PyTorch eager, side by side, measured in one run on this host.

    .venv/bin/python benchmarks/compare.py [--models mobilenet_v3_large mobilenet_v3_small
        lraspp_mobilenet_v3_large] [--threads 1 2] [--repeat 60] [--db schedules/db]
        [--out benchmarks/results] [--readme]

Per model (batch 1, fp32, the model's default input: 224x224, LR-ASPP 512x512) and per thread
count: mobilec untuned (default schedules, no database), mobilec tuned (with the tuning database
for this host, when one exists), onnxruntime (all graph optimisations) and PyTorch eager
(``torch.no_grad``). Every engine takes the same numpy input and returns numpy output, so
conversion costs are counted alike. Each thread count runs in its own process (TVM sizes its
thread pool once per process), engines interleaved in rounds after a warm-up so drift on a shared
host hits them alike. Prints median/min/max and each median's ratio to onnxruntime's; writes
results.json, compare.md and compare.png under --out; --readme puts the table into README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ["mobilenet_v3_large", "mobilenet_v3_small", "lraspp_mobilenet_v3_large"]
ENGINES = ["mobilec untuned", "mobilec tuned", "onnxruntime", "pytorch eager"]
README_BEGIN, README_END = "<!-- compare:begin -->", "<!-- compare:end -->"


# ---------------------------------------------------------------------------------------------
# worker: one process per thread count

def _engines(entry: dict, threads: int) -> dict:
    """name -> callable(x) -> numpy, for one model."""
    import onnxruntime as ort
    import torch

    from mobilec.frontends.registry import create_model
    from mobilec.runtime import load

    engines = {}
    for name in ("mobilec untuned", "mobilec tuned"):
        if entry.get(name):
            module = load(entry[name])
            engines[name] = lambda x, m=module: m(x)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(entry["onnx"], so, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    engines["onnxruntime"] = lambda x: sess.run(None, {feed: x})[0]
    torch.set_num_threads(threads)
    model = create_model(entry["model"]).eval()  # the same seeded weights the ONNX file was exported from

    def eager(x):
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        return (out["out"] if isinstance(out, dict) else out).numpy()

    engines["pytorch eager"] = eager
    return engines


def worker(plan: dict, threads: int, warmup: int, repeat: int, rounds: int) -> dict:
    results = {}
    for entry in plan["models"]:
        engines = _engines(entry, threads)
        x = np.random.default_rng(0).standard_normal(entry["shape"]).astype("float32")
        reference = engines["onnxruntime"](x)
        times = {name: [] for name in engines}
        errors = {}
        for name, fn in engines.items():
            out = None
            for _ in range(warmup):
                out = fn(x)
            errors[name] = float(np.abs(out - reference).max() / max(np.abs(reference).max(), 1e-12))
        for _ in range(rounds):
            for name, fn in engines.items():
                for _ in range(max(1, repeat // rounds)):
                    t = time.perf_counter()
                    fn(x)
                    times[name].append((time.perf_counter() - t) * 1e3)
        results[entry["model"]] = {
            name: {"median_ms": float(np.median(ms)), "min_ms": float(np.min(ms)), "max_ms": float(np.max(ms)),
                   "runs": len(ms), "rel_error": errors[name]}
            for name, ms in times.items()}
    return results


# ---------------------------------------------------------------------------------------------
# parent: compile, run the workers, report

def prepare(models: list[str], db: str, tmp: Path) -> dict:
    from mobilec.compiler import CompileConfig, compile_model
    from mobilec.compiler.targets import resolve
    from mobilec.frontends import export_model
    from mobilec.schedules.database import database_dir, is_database

    host = resolve("host")
    has_db = is_database(database_dir(db, host.triple, host.cpu))
    plan = {"host": f"{host.triple}-{host.cpu}", "database": db if has_db else None, "models": []}
    for name in models:
        onnx_path = tmp / f"{name}.onnx"
        export_model(name, onnx_path)
        entry = {"model": name, "onnx": str(onnx_path)}
        t = time.perf_counter()
        untuned = compile_model(onnx_path, tmp / f"{name}.so", CompileConfig())
        entry["compile_s"] = time.perf_counter() - t
        entry["mobilec untuned"] = str(untuned.library)
        entry["shape"] = untuned.manifest.inputs[0]["shape"]
        if has_db:
            tuned = compile_model(onnx_path, tmp / f"{name}_tuned.so", CompileConfig(tuning_db=db))
            if tuned.manifest.tuned_kernels:
                entry["mobilec tuned"] = str(tuned.library)
                entry["tuned_kernels"] = tuned.manifest.tuned_kernels
        plan["models"].append(entry)
        print(f"compiled {name} in {entry['compile_s']:.1f} s"
              + (f" (+ tuned: {entry.get('tuned_kernels', 0)} kernels from the database)" if has_db else ""))
    return plan


def rows(plan: dict, measured: dict) -> list[dict]:
    out = []
    for entry in plan["models"]:
        for threads, per_model in measured.items():
            res = per_model[entry["model"]]
            ort = res["onnxruntime"]["median_ms"]
            for engine in ENGINES:
                if engine in res:
                    r = res[engine]
                    out.append({"model": entry["model"], "threads": int(threads), "engine": engine, **r,
                                "ratio": r["median_ms"] / ort})
    return out


def markdown(table: list[dict], plan: dict) -> str:
    lines = [f"Measured by `benchmarks/compare.py` on this host ({plan['host']}); batch 1, fp32; "
             f"median (min-max) ms of {table[0]['runs']} runs; ratio = median / onnxruntime's median.",
             "", "| model | threads | engine | median ms | min-max ms | vs onnxruntime |",
             "|---|---:|---|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['model']} | {r['threads']} | {r['engine']} | {r['median_ms']:.2f} | "
                     f"{r['min_ms']:.2f}-{r['max_ms']:.2f} | {r['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def chart(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["threads"]) for r in table}, key=lambda g: (g[0], g[1]))
    engines = [e for e in ENGINES if any(r["engine"] == e for r in table)]
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(groups)), 4.5))
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        values = [next((r["ratio"] for r in table if (r["model"], r["threads"]) == g and r["engine"] == engine),
                       0.0) for g in groups]
        ax.bar([j + i * width for j in range(len(groups))], values, width, label=engine)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels([f"{m}\n{t} thread{'s' if t > 1 else ''}" for m, t in groups], fontsize=7)
    ax.set_ylabel("latency / onnxruntime latency (lower is faster)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def update_readme(md: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_BEGIN not in text:
        raise SystemExit(f"README.md has no {README_BEGIN} ... {README_END} section to update")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{md}{README_END}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeat", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--db", default=str(ROOT / "schedules" / "db"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--readme", action="store_true", help="write the table into README.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:  # a child: one thread count, results as JSON on stdout
        plan = json.loads(Path(args.worker).read_text())
        print(json.dumps(worker(plan, args.threads[0], args.warmup, args.repeat, args.rounds)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        plan = prepare(args.models, args.db, Path(tmp))
        plan_path = Path(tmp) / "plan.json"
        plan_path.write_text(json.dumps(plan))
        measured = {}
        for threads in args.threads:
            env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
            print(f"measuring with {threads} thread(s) ...", flush=True)
            proc = subprocess.run([sys.executable, __file__, "--worker", str(plan_path), "--threads", str(threads),
                                   "--repeat", str(args.repeat), "--warmup", str(args.warmup),
                                   "--rounds", str(args.rounds)], env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"worker with {threads} threads failed:\n{proc.stderr[-4000:]}")
            measured[threads] = json.loads(proc.stdout.strip().splitlines()[-1])
    table = rows(plan, measured)
    for r in table:
        assert r["rel_error"] < 1e-3, f"{r['model']} {r['engine']}: output differs from onnxruntime ({r['rel_error']:.2e})"
    md = markdown(table, plan)
    print(md)
    (out / "results.json").write_text(json.dumps({"plan": {k: v for k, v in plan.items() if k != "models"},
                                                  "models": [{k: v for k, v in e.items() if k in ("model", "compile_s",
                                                              "tuned_kernels", "shape")} for e in plan["models"]],
                                                  "rows": table}, indent=1))
    (out / "compare.md").write_text(md)
    chart(table, out / "compare.png")
    print(f"wrote {out / 'compare.md'}, {out / 'compare.png'}, {out / 'results.json'}")
    if args.readme:
        update_readme(md)
        print("README.md updated")


if __name__ == "__main__":
    main()
