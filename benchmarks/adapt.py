"""NetAdapt's goal on this host: ``mobilec adapt`` with a user's defaults, then the start and the
adapted network compiled by ``mobilec compile`` and timed in alternating blocks in one run, with
onnxruntime on both ONNX files for scale.

    .venv/bin/python benchmarks/adapt.py [--model mobilenet_v3_small] [--budget 0.75] [--out adapt-run]
        [--results benchmarks/results/adapt.md]

Prints (and writes to --results) the adaptation's steps, the adapted / start latency ratio, and
the latency table's prediction against both networks' measured times. ``--out`` holds the run
(a rerun resumes it); the latency table is ``OUT/latency-table.json``, so a fresh ``--out``
measures from scratch, as a new user's first run does.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from mobilec.adapt import AdaptConfig, Device, adapt
from mobilec.adapt.latency import LatencyTable, time_on
from mobilec.frontends.mobilenetv3 import Plan
from mobilec.compiler import CompileConfig, compile_model
from mobilec.present import live_lines, onnxruntime_session
from mobilec.runtime import load, random_feeds
from mobilec.runtime.timing import interleaved
from zoo import cpu_name  # this folder's zoo benchmark (a script's folder is on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mobilenet_v3_small")
    ap.add_argument("--budget", type=float, default=0.75)
    ap.add_argument("--out", default="adapt-run")
    ap.add_argument("--results", default="benchmarks/results/adapt.md")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0, help="time the networks for at least this long")
    args = ap.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    cfg = AdaptConfig(budget=args.budget, synthetic=2048, table=str(out / "latency-table.json"))
    with live_lines() as progress:
        res = adapt(args.model, out, cfg, progress)
    adapt_s = time.perf_counter() - started
    log = json.loads((out / "log.json").read_text())
    start_onnx = out / "start.onnx"
    from mobilec.frontends import ExportConfig, create_model, export_onnx

    start = create_model(args.model)
    start.load_state_dict(torch.load(out / "start.pt", weights_only=True))
    export_onnx(start, start_onnx, ExportConfig(input_size=log["identity"]["input_size"]))
    libs = {name: compile_model(path, out / f"{name}.so", CompileConfig()).library
            for name, path in (("start", start_onnx), ("adapted", out / "adapted.onnx"))}
    modules = {name: load(lib) for name, lib in libs.items()}  # the default threads, as `time_on`
    threads = modules["start"].threads
    feeds = random_feeds(modules["start"])
    engines = {f"mobilec {n}": (lambda m=m: m.run(feeds)) for n, m in modules.items()}
    for name, path in (("start", start_onnx), ("adapted", out / "adapted.onnx")):
        sess = onnxruntime_session(str(path), threads)
        engines[f"onnxruntime {name}"] = lambda s=sess: s.run(None, feeds)
    timed = interleaved(engines, warmup=10, rounds=args.rounds, block=5, min_seconds=args.seconds)
    on_device = time_on(Device(), libs)  # the table's own timing: the device's timer, quiet time
    final = log.get("final", {})
    pred_start, pred_adapted = final.get("start_predicted_ms"), final.get("predicted_ms")
    lines = [
        f"## {time.strftime('%Y-%m-%d')}: `mobilec adapt {args.model} --target host --local --budget {args.budget} "
        f"--synthetic`",
        "",
        f"CPU: {cpu_name()}, {os.cpu_count()} cores; {threads} threads; adaptation took {adapt_s / 60:.1f} min "
        f"({res.table_measured} layers compiled and timed for the table).",
        "",
        "| step | shrunk | predicted ms | measured ms (in the run) | measured / start beside it | accuracy | reward |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in log["steps"]:
        c = s["proposals"][s["chosen"]] if s.get("proposals") else None
        what = f"{c['what']} {c['width'][0]} -> {c['width'][1]}" if c else "start"
        beside = f"{s['measured_ms'] / s['start_measured_ms']:.2f}x" if "start_measured_ms" in s else "-"
        lines.append(f"| {s['step']} | {what} | {s['predicted_ms']:.3f} | {s['measured_ms']:.3f} | {beside} | "
                     f"{s['accuracy']:.3f} | {s['reward']:.3f} |")
    lines += [
        "",
        f"Accuracy: {log['accuracy_means']}; after the final fine-tune of {final.get('fine_tune_steps')} steps: "
        f"{final.get('accuracy', float('nan')):.3f} (start {log['steps'][0]['accuracy']:.3f}).",
        "",
        f"Timed afterwards in alternating blocks of 5 calls ({timed['mobilec start']['rounds']} rounds over at least "
        f"{args.seconds:.0f} s, {threads} threads), each network compiled by `mobilec compile` with the defaults; "
        f"`Module.run` with numpy in and out, the median of the block medians and their 10th percentile (quiet):",
        "",
        "| engine | start ms | adapted ms | adapted / start | start, quiet | adapted, quiet | adapted / start, quiet |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for engine in ("mobilec", "onnxruntime"):
        a, b = timed[f"{engine} start"], timed[f"{engine} adapted"]
        cells = [f"{a[k]:.3f} | {b[k]:.3f} | {b[k] / a[k]:.2f}x" for k in ("median_ms", "quiet_ms")]
        lines.append(f"| {engine} | {cells[0]} | {cells[1]} |")
    a, b = on_device["start"], on_device["adapted"]
    lines += ["", f"Timed as the table times (the runtime's own timer, quiet time): start {a:.3f} ms, adapted "
                  f"{b:.3f} ms, {b / a:.2f}x."]
    if pred_start:
        lines += ["", f"The table's prediction against these: start {pred_start:.3f} ms ({pred_start / a - 1:+.1%}), "
                      f"adapted {pred_adapted:.3f} ms ({pred_adapted / b - 1:+.1%}). Target {res.target_ms:.3f} ms "
                      f"({args.budget} of the start's prediction)."]
    # the table's error without the drift between timings: both plans' layers timed again, in one
    # batch with the two whole networks
    check = out / "latency-check.json"
    check.unlink(missing_ok=True)
    table = LatencyTable(check, Device())
    plans = {"start": start.plan, "adapted": Plan.from_dict(log["steps"][-1]["plan"])}
    table.measure(list(plans.values()), log["identity"]["input_size"], beside=libs)
    pred = {n: table.predict(p, log["identity"]["input_size"]) for n, p in plans.items()}
    m = table.beside_ms
    lines += ["", "Both networks' layers timed again in one batch with the two whole networks (quiet time): "
                  + ", ".join(f"{n} predicted {pred[n]:.3f} ms, measured {m[n]:.3f} ms ({pred[n] / m[n] - 1:+.1%})"
                              for n in plans)
                  + f"; ratio predicted {pred['adapted'] / pred['start']:.2f}x, measured "
                    f"{m['adapted'] / m['start']:.2f}x."]
    text = "\n".join(lines) + "\n"
    print(text)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text if not results.exists() else results.read_text() + "\n" + text)


if __name__ == "__main__":
    main()
