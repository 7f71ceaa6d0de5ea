"""mobilec against onnxruntime, PyTorch eager and the phone runtimes, measured in one run on this host.

    .venv/bin/python benchmarks/compare.py [--models mobilenet_v3_large mobilenet_v3_small
        lraspp_mobilenet_v3_large] [--threads 1 2] [--repeat 60] [--db TUNING_DB]
        [--peers litert ncnn mnn] [--peers-python .venv-peers/bin/python]
        [--out benchmarks/results] [--readme]

Per model (batch 1, fp32, the model's default input: 224x224, LR-ASPP 512x512) and per thread
count: mobilec untuned (default schedules, no database), mobilec tuned (with the tuning database
for this host, when one exists), onnxruntime (all graph optimisations), PyTorch eager
(``torch.no_grad``) and the peers, the runtimes MobileNetV3 runs on in phones today: LiteRT with
XNNPACK, ncnn and MNN (``benchmarks/peers.py`` says how each is converted). They are optional:

    .venv/bin/pip install -e .[peers]       # the runtimes, pnnx and MNN's converter
    python3 -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0 litert-torch==0.10.0

(litert-torch would downgrade typing_extensions and pull JAX into the main venv, so it converts in
its own, found by --peers-python.) A peer that is not installed or fails to convert is listed as
skipped with the reason.

Every engine takes the same numpy input and returns numpy output, so conversion costs are counted
alike; each uses the same thread count. Outputs are checked against onnxruntime's first (max abs
error, and relative to the output's largest magnitude); an engine past the tolerance is reported
as disagreeing and not timed. Each thread count runs in its own process (TVM sizes its thread pool
once per process). Timing is ``mobilec.runtime.timing.interleaved``, as for `mobilec bench --vs`: after a
warm-up, engines alternate in blocks of calls, in a shuffled order each round, and each engine's
figure is the median of its block medians, so drift on a shared host hits all alike and a thread
pool still spinning from the previous engine (which slows a block's first call) does not move it. Prints median/min/max, each median's ratio to onnxruntime's and to the
fastest peer's; writes results.json, compare.md and compare.png under --out; --readme appends the
table, dated and naming this machine's CPU, to docs/performance.md.
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

import peers  # benchmarks/peers.py, beside this file
from mobilec.present import onnxruntime_session
from mobilec.runtime.timing import interleaved

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ["mobilenet_v3_large", "mobilenet_v3_small", "lraspp_mobilenet_v3_large"]
OWN = ["mobilec untuned", "mobilec tuned"]
ENGINES = OWN + ["onnxruntime", "pytorch eager"] + list(peers.PEERS.values())
TOLERANCE = 1e-3  # max |out - onnxruntime| / max |onnxruntime|; past it an engine disagrees


# ---------------------------------------------------------------------------------------------
# worker: one process per thread count

def _engines(entry: dict, threads: int) -> tuple[dict, dict]:
    """name -> callable(x) -> numpy for one model, and name -> reason for the peers that cannot run."""
    import torch

    from mobilec.frontends.registry import create_model
    from mobilec.runtime import load

    engines, skipped = {}, {}
    for name in OWN:
        if entry.get(name):
            module = load(entry[name], threads=threads)
            engines[name] = lambda x, m=module: m(x)
    sess = onnxruntime_session(entry["onnx"], threads)
    feed = sess.get_inputs()[0].name
    engines["onnxruntime"] = lambda x: sess.run(None, {feed: x})[0]
    torch.set_num_threads(threads)
    model = create_model(entry["model"]).eval()  # the same seeded weights the ONNX file was exported from

    def eager(x):
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        return (out["out"] if isinstance(out, dict) else out).numpy()

    engines["pytorch eager"] = eager
    for name, peer in entry.get("peers", {}).items():
        if "skipped" in peer:
            skipped[name] = peer["skipped"]
            continue
        try:
            engines[name] = peers.load(name, peer["artifact"], threads)
        except Exception as e:  # a runtime that cannot load the converted model is skipped, not fatal
            skipped[name] = f"could not load: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return engines, skipped


def _check(fn, x: np.ndarray, reference: np.ndarray, warmup: int) -> dict:
    """Warm an engine up and compare its output with onnxruntime's."""
    out = None
    for _ in range(warmup):
        out = np.asarray(fn(x))
    if out.shape != reference.shape:
        return {"status": "disagrees", "reason": f"output shape {list(out.shape)}, onnxruntime's {list(reference.shape)}",
                "max_abs_error": None, "rel_error": None}
    err = float(np.abs(out - reference).max())
    rel = err / max(float(np.abs(reference).max()), 1e-12)
    ok = rel <= TOLERANCE
    return {"status": "ok" if ok else "disagrees", "max_abs_error": err, "rel_error": rel,
            **({} if ok else {"reason": f"max abs error {err:.3g} = {rel:.2e} of the output scale > {TOLERANCE:g}"})}


def worker(plan: dict, threads: int, warmup: int, repeat: int, rounds: int) -> dict:
    results = {}
    for entry in plan["models"]:
        engines, skipped = _engines(entry, threads)
        x = np.random.default_rng(0).standard_normal(entry["shape"]).astype("float32")
        reference = engines["onnxruntime"](x)
        res = {name: {"status": "skipped", "reason": reason} for name, reason in skipped.items()}
        for name, fn in list(engines.items()):
            try:
                res[name] = _check(fn, x, reference, warmup)
            except Exception as e:
                res[name] = {"status": "skipped", "reason": f"failed to run: {type(e).__name__}: {str(e)[:200]}"}
            if res[name]["status"] != "ok":
                del engines[name]  # reported, not timed
        # the one fair timing of mobilec.present: blocks of calls, engines alternating, order rotating
        timed = interleaved({name: (lambda fn=fn: fn(x)) for name, fn in engines.items()}, warmup=0,
                            rounds=rounds, block=max(1, repeat // rounds))  # warmed up by _check
        for name, t in timed.items():
            res[name].update(median_ms=t["median_ms"], min_ms=t["min_ms"], max_ms=t["max_ms"], runs=t["calls"])
        results[entry["model"]] = res
    return results


# ---------------------------------------------------------------------------------------------
# parent: compile, run the workers, report

def prepare(models: list[str], db: str, tmp: Path, peer_keys: list[str], peers_python: str) -> dict:
    from mobilec.compiler import CompileConfig, compile_model
    from mobilec.targets import resolve
    from mobilec.frontends import export_model
    from mobilec.schedules.database import database_dir, is_database

    host = resolve("host")
    has_db = db is not None and is_database(database_dir(db, host.triple, host.cpu))
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
        print(f"compiled {name} in {entry['compile_s']:.1f} s"
              + (f" (+ tuned: {entry.get('tuned_kernels', 0)} kernels from the database)" if has_db else ""), flush=True)
        entry["peers"] = peers.convert(peer_keys, name, onnx_path, entry["shape"], tmp, peers_python)
        for engine, peer in entry["peers"].items():
            print(f"  {engine}: " + (f"skipped: {peer['skipped']}" if "skipped" in peer
                                     else f"converted in {peer['convert_s']:.1f} s"), flush=True)
        plan["models"].append(entry)
    return plan


def rows(plan: dict, measured: dict) -> list[dict]:
    """One row per (model, threads, engine), timed or not; ratios to onnxruntime and to the fastest peer."""
    out = []
    for entry in plan["models"]:
        for threads, per_model in measured.items():
            res = per_model[entry["model"]]
            ort = res["onnxruntime"]["median_ms"]
            timed_peers = {e: res[e]["median_ms"] for e in peers.PEERS.values() if "median_ms" in res.get(e, {})}
            fastest = min(timed_peers, key=timed_peers.get) if timed_peers else None
            for engine in ENGINES:
                if engine not in res:
                    continue
                r = dict(res[engine])
                if "median_ms" in r:
                    r["ratio"] = r["median_ms"] / ort
                    r["ratio_fastest_peer"] = r["median_ms"] / timed_peers[fastest] if fastest else None
                out.append({"model": entry["model"], "threads": int(threads), "engine": engine,
                            "fastest_peer": fastest, **r})
    return out


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown(table: list[dict], plan: dict) -> str:
    runs = next(r["runs"] for r in table if "runs" in r)
    lines = [f"Measured by `benchmarks/compare.py` on this host ({plan['host']}); batch 1, fp32; "
             f"median (min-max) ms of {runs} runs; ratios = median / onnxruntime's median and / the fastest "
             f"peer's (LiteRT-XNNPACK, ncnn, MNN: the fastest one named per row); error = max |out - onnxruntime| "
             f"(relative to the output's largest magnitude).",
             "", "| model | threads | engine | median ms | min-max ms | vs onnxruntime | vs fastest peer | max abs error |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    notes = []
    for r in table:
        err = "-" if r.get("max_abs_error") is None else f"{r['max_abs_error']:.1e} ({r['rel_error']:.0e})"
        if "median_ms" in r:
            peer = f" ({r['fastest_peer']})" if r["fastest_peer"] else ""
            lines.append(f"| {r['model']} | {r['threads']} | {r['engine']} | {r['median_ms']:.2f} | "
                         f"{r['min_ms']:.2f}-{r['max_ms']:.2f} | {_x(r['ratio'])} | {_x(r['ratio_fastest_peer'])}{peer} | "
                         f"{err} |")
        else:
            lines.append(f"| {r['model']} | {r['threads']} | {r['engine']} | {r['status']} | | | | {err} |")
            notes.append(f"- {r['model']}, {r['threads']} thread(s), {r['engine']}: {r['status']}: {r['reason']}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def chart(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in table if "median_ms" in r]
    groups = sorted({(r["model"], r["threads"]) for r in timed}, key=lambda g: (g[0], g[1]))
    engines = [e for e in ENGINES if any(r["engine"] == e for r in timed)]
    panels = [("ratio", "latency / onnxruntime's")]
    if any(r["ratio_fastest_peer"] for r in timed):
        panels.append(("ratio_fastest_peer", "latency / fastest peer's"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 1.8 * len(groups)), 4 * len(panels)), squeeze=False)
    width = 0.8 / len(engines)
    for ax, (key, label) in zip(axes[:, 0], panels):
        top = min(max(r[key] or 0.0 for r in timed) * 1.1, 4.0)  # PyTorch eager would flatten the rest
        for i, engine in enumerate(engines):
            values = [next((r[key] or 0.0 for r in timed if (r["model"], r["threads"]) == g and r["engine"] == engine),
                           0.0) for g in groups]
            xs = [j + i * width for j in range(len(groups))]
            ax.bar(xs, [min(v, top) for v in values], width, label=engine)
            for xv, v in zip(xs, values):
                if v:
                    ax.text(xv, min(v, top), f"{v:.2f}" + ("^" if v > top else ""), ha="center", va="bottom",
                            fontsize=5, rotation=90)
        ax.set_ylim(0, top * 1.12)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
        ax.set_xticklabels([f"{m}\n{t} thread{'s' if t > 1 else ''}" for m, t in groups], fontsize=7)
        ax.set_ylabel(f"{label}\n(lower is faster)", fontsize=8)
    axes[0, 0].legend(fontsize=7, ncol=2)
    untimed = sorted({f"{r['engine']}: {r['status']}" for r in table if "median_ms" not in r})
    if untimed:  # engines absent from the bars, and why (the reasons are in compare.md)
        fig.text(0.01, 0.005, "not timed: " + "; ".join(untimed), fontsize=7)
    fig.tight_layout(rect=(0, 0.03 if untimed else 0, 1, 1))
    fig.savefig(path, dpi=120)


def update_readme(md: str) -> None:
    """Append the table to docs/performance.md under today's date and this machine's CPU (the
    README's current table is edited by hand from these)."""
    import platform
    import time

    from mobilec.targets import resolve

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.lower().startswith("model name")), platform.processor() or "unknown CPU")
    doc = ROOT / "docs" / "performance.md"
    with doc.open("a") as f:
        f.write(f"\n## {time.strftime('%Y-%m-%d')}: benchmarks/compare.py on {cpu} "
                f"(`{resolve('host').cpu}` preset)\n\n{md}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeat", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--db", default=None, help="a tuning database (mobilec tune): also time the model built with it")
    ap.add_argument("--peers", nargs="*", choices=list(peers.PEERS), default=list(peers.PEERS),
                    help="phone runtimes to compare with (none: --peers alone)")
    ap.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"),
                    help="interpreter with litert-torch, when this one has none (see benchmarks/peers.py)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--readme", action="store_true", help="append the table, dated, to docs/performance.md")
    ap.add_argument("--worker", nargs=2, metavar=("PLAN", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:  # a child: one thread count; results as JSON in a file (runtimes print on stdout)
        plan = json.loads(Path(args.worker[0]).read_text())
        Path(args.worker[1]).write_text(json.dumps(worker(plan, args.threads[0], args.warmup, args.repeat, args.rounds)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        plan = prepare(args.models, args.db, Path(tmp), args.peers, args.peers_python)
        plan_path = Path(tmp) / "plan.json"
        plan_path.write_text(json.dumps(plan))
        measured = {}
        for threads in args.threads:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))  # mobilec: load(threads=)
            print(f"measuring with {threads} thread(s) ...", flush=True)
            result = Path(tmp) / f"measured_{threads}.json"
            proc = subprocess.run([sys.executable, __file__, "--worker", str(plan_path), str(result),
                                   "--threads", str(threads), "--repeat", str(args.repeat), "--warmup",
                                   str(args.warmup), "--rounds", str(args.rounds)],
                                  env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"worker with {threads} threads failed:\n{proc.stderr[-4000:]}")
            measured[threads] = json.loads(result.read_text())
    table = rows(plan, measured)
    md = markdown(table, plan)
    print(md)
    (out / "results.json").write_text(json.dumps({"plan": {k: v for k, v in plan.items() if k != "models"},
                                                  "models": [{k: v for k, v in e.items() if k in ("model", "compile_s",
                                                              "tuned_kernels", "shape")}
                                                             | {"peers": {n: {k: v for k, v in p.items() if k != "artifact"}
                                                                          for n, p in e["peers"].items()}}
                                                             for e in plan["models"]],
                                                  "rows": table}, indent=1))
    (out / "compare.md").write_text(md)
    chart(table, out / "compare.png")
    print(f"wrote {out / 'compare.md'}, {out / 'compare.png'}, {out / 'results.json'}")
    wrong = [f"{r['model']} {r['engine']} ({r['threads']} threads): {r['reason']}"
             for r in table if r["engine"] in OWN + ["onnxruntime"] and r["status"] != "ok"]
    if wrong:  # a peer that disagrees is only reported; mobilec disagreeing is a bug
        raise SystemExit("mobilec's output differs from onnxruntime's:\n" + "\n".join(wrong))
    if args.readme:
        update_readme(md)
        print("README.md updated")


if __name__ == "__main__":
    main()
