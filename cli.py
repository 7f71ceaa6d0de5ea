"""The ``mobilec`` command line. It only parses, validates and calls the Python API; each verb's
API is imported when the verb runs, so ``mobilec run`` never loads torch or TVM's compiler."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from mobilec import stops


def _console():
    from rich.console import Console

    # wide enough for model names when piped (rich assumes 80 columns off a terminal)
    return Console() if sys.stdout.isatty() else Console(width=160)


def _table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="left" if c in ("name", "model", "pattern", "key", "reason") else "right")
    for r in rows:
        t.add_row(*[str(v) for v in r])
    _console().print(t)


# ---- verbs ----------------------------------------------------------------------------------

def cmd_models(args) -> int:
    from mobilec.frontends import model_table

    def paper(v, unit):
        return "-" if v is None else f"{v:g}{unit}"

    rows = [[r["name"], r["task"], r["input_size"], f"{r['params_m']:.2f}M", paper(r["paper_params_m"], "M"),
             f"{r['madds_m']:.1f}M", paper(r["paper_madds_m"], "M")] for r in model_table()]
    _table("mobilec models (multiply-adds at the default input size)",
           ["name", "task", "input", "params", "paper params", "MAdds", "paper MAdds"], rows)
    return 0


def cmd_export(args) -> int:
    from mobilec.frontends import ExportConfig, export_model, get_spec

    spec = get_spec(args.model)
    cfg = ExportConfig(input_size=args.input_size or spec.input_size, batch=args.batch, opset=args.opset,
                       exporter=args.exporter)
    res = export_model(args.model, args.output, cfg, weights=args.weights)
    print(f"wrote {res.path} (opset {res.opset}, input {res.input_shape}, output {res.output_shape}); "
          f"onnx.checker passed; onnxruntime vs PyTorch max abs error {res.max_abs_error:.3g}")
    return 0


def cmd_quantize(args) -> int:
    from mobilec.frontends.quantize import QuantizeConfig, quantize_model

    cfg = QuantizeConfig(images=args.images, random=args.random, held_out=args.held_out,
                         activation_type=args.activation_type)
    res = quantize_model(args.model, args.output, cfg)
    print(f"calibrated on {res.calibration}")
    print(f"wrote {res.path} (QDQ; quantised: "
          + ", ".join(f"{n} {op}" for op, n in sorted(res.quantized.items())) + "); onnx.checker passed")
    print(f"int8 vs fp32 on {res.held_out} held-out inputs (onnxruntime): top-1 agreement "
          f"{res.top1_agreement:.1%}, cosine {res.cosine:.4f}")
    return 0


def _shapes(items) -> dict:
    from mobilec.compiler import parse_shape

    return dict(parse_shape(s) for s in items or [])


def _print_report(report: dict) -> None:
    rows = [[name, n] for name, n in report["matched"].items()]
    _table("fusions matched", ["pattern", "count"], rows)
    print("totals: " + ", ".join(f"{k} {v}" for k, v in report["totals"].items()))
    if report["refused"]:
        _table("near misses (not fused)", ["pattern", "node", "reason"],
               [[r["pattern"], r["node"], r["reason"]] for r in report["refused"]])
    if report.get("int8"):
        print("int8 kernels: " + ", ".join(f"{k} {v}" for k, v in report["int8"].items()))
    if report.get("float_quantized"):
        _table("quantised ops left in float (dequantised as the file says)", ["op", "reason"],
               [[r["op"], r["reason"]] for r in report["float_quantized"]])


def _model_file(path: str) -> str:
    """A missing ONNX file is said at once, before TVM's compiler takes seconds to import."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file" if not Path(path).exists() else f"{path}: not a file")
    return path


def cmd_compile(args) -> int:
    _model_file(args.model)
    from mobilec.compiler import CompileConfig, compile_model

    cfg = CompileConfig(target=args.target, cpu=args.cpu, num_cores=args.num_cores,
                        input_shapes=_shapes(args.input_shape), tuning_db=args.tuning_db, dump_ir=args.dump_ir,
                        fuse=not args.no_fuse, default_schedules=not args.no_default_schedules, layout=args.layout,
                        force_tuning_db=args.force_tuning_db, integer=not args.no_integer)
    from mobilec.present import compile_progress

    with compile_progress(Path(args.model).name) as progress:
        res = compile_model(args.model, args.output, cfg, progress)
    m = res.manifest
    print(f"wrote {res.library} and {res.library.with_suffix('.json')} in {res.seconds:.1f} s: "
          f"{m.triple} (cpu {m.cpu}), inputs {[(i['name'], i['shape']) for i in m.inputs]}, "
          f"outputs {[(o['name'], o['shape']) for o in m.outputs]}")
    _print_report(m.fusion)
    kinds = {k: v for k, v in m.default_schedules.items() if k != "unscheduled"}
    print(f"schedules: {m.tuned_kernels} kernels from the tuning database; default schedules "
          + (", ".join(f"{k} {v}" for k, v in kinds.items()) or "none")
          + (f"; left to plain lowering: {', '.join(m.default_schedules['unscheduled'])}"
             if m.default_schedules.get("unscheduled") else ""))
    return 0


def cmd_inspect(args) -> int:
    _model_file(args.model)
    from mobilec.compiler import inspect_model

    ins = inspect_model(args.model, _shapes(args.input_shape))
    print(f"{args.model}: inputs {[(i.name, i.shape) for i in ins.inputs]}, "
          f"outputs {[(o.name, o.shape) for o in ins.outputs]}")
    _print_report(ins.report.to_dict())
    return 0


def cmd_tune(args) -> int:
    _model_file(args.model)
    from mobilec.compiler import TuneConfig, tune_model
    from mobilec.errors import ConfigError
    from mobilec.schedules.progress import Progress
    from mobilec.schedules.tuning import TuneOptions, trial_budget

    if not args.local and not args.tracker:
        raise ConfigError("say where to measure: --tracker HOST:PORT --key KEY, or --local")
    opts = TuneOptions(trials=args.trials, minutes=args.minutes, per_round=args.per_round, all_tasks=not args.conv_only,
                       tracker=None if args.local else args.tracker, key=args.key, seed=args.seed,
                       build_limit=args.build_limit)
    cfg = TuneConfig(target=args.target, cpu=args.cpu, num_cores=args.num_cores, db=args.db,
                     input_shapes=_shapes(args.input_shape), options=opts, verify=not args.no_verify)
    res = tune_model(args.model, cfg, console=_console())
    if res.measured == 0:
        print(f"nothing to measure: {res.database} already holds the budget of {trial_budget(opts)} search trials "
              f"for these tasks (raise --trials to tune further)")
    else:
        seeded = f", after measuring {res.seeded} default schedules to start from" if res.seeded else ""
        rate = f" ({res.measured / res.seconds:.2f} candidates/s on {res.devices} device{'s' * (res.devices > 1)})"
        _table(f"tuned {res.measured} candidates in {res.seconds:.0f} s{rate}{seeded} -> {res.database}",
               Progress.SUMMARY, res.progress.summary_rows())
        timed = sum(1 for t in res.progress.tasks if t.default_ms and t.best_ms)
        if timed and not res.confirmed:  # else the confirmation, measured side by side, says who won
            start = res.progress.default_estimate_ms
            total = (f"; the tuned kernels' estimated total {start:.3f} -> {res.progress.estimate_ms():.3f} ms"
                     if start else "")
            print(f"the search beat the default schedule in {res.progress.beat_default()} of {timed} tasks{total}")
        settled = res.progress.within(0.10)
        if settled is not None:
            print(f"the kernels' estimated total came within 10% of its final value after {settled[0]} trials "
                  f"({settled[1]:.0f} s)")
        if res.confirmed:
            _print_confirmed(res.confirmed)
        if res.plot:
            print(f"plot: {res.plot}")
        p = res.progress
        if p.out_of_time:
            of = f" of {p.budget}" if p.bounded else ""
            print(f"stopped at the time budget of {args.minutes:g} minutes with {p.trials}{of} trials measured; "
                  f"a rerun continues from the database")
        elif p.all_converged():
            print(f"every task converged (its best unchanged by more than {p.improved:.0%} for {p.patience} trials) "
                  f"after {p.trials} trials" + (f", before the time budget of {args.minutes:g} minutes"
                                                if args.minutes else "") + "; more trials would not help")
    if res.rechecked:
        _print_rechecked(res.rechecked)
    v = res.verdict
    if v is not None:
        print(f"whole model: {v.describe()}")
        print("compile --tuning-db applies it" if v.faster else
              "the database makes this model slower: compile --tuning-db will not apply it (--force-tuning-db "
              "does); more trials may find better kernels")
    return 0


def _print_confirmed(confirmed) -> None:
    from mobilec.schedules.confirm import CONTENDERS, MARGIN, ROUNDS, estimate_ms

    with_default = [c for c in confirmed if c.default_ms is not None]
    won = sum(c.searched_won for c in with_default)
    before, after = estimate_ms(confirmed)
    total = f"; their estimated total {before:.3f} -> {after:.3f} ms ({after / before:.2f}x)" if before else ""
    alone = len(confirmed) - len(with_default)
    alone = f"; {alone} without a measured default schedule keep their fastest candidate" if alone else ""
    print(f"confirmed: the default and up to {CONTENDERS} searched candidates of {len(with_default)} tasks measured "
          f"again side by side in {ROUNDS} interleaved rounds: a searched candidate beat the default schedule (by "
          f"more than {MARGIN:.0%}) in {won} of them, the default held in {len(with_default) - won}{total}{alone}; "
          f"compile --tuning-db applies the winners")


def _print_rechecked(rechecked) -> None:
    from mobilec.schedules.confirm import MARGIN

    kept = [r for r in rechecked if r.kept]
    before, after = (sum(r.default_us for r in rechecked),
                     sum(r.searched_us if r.kept else r.default_us for r in rechecked))
    print(f"inside the model: {len(rechecked)} searched winners timed in the whole model with and without the "
          f"database: {len(kept)} faster there by more than {MARGIN:.0%} kept, {len(rechecked) - len(kept)} "
          f"gave way to the default schedule; their time per inference {before:.0f} -> {after:.0f} us")
    slower = sorted((r for r in rechecked if not r.kept), key=lambda r: r.default_us - r.searched_us)
    if slower:
        print("  reverted: " + ", ".join(f"{r.name} ({r.searched_us / r.default_us:.2f}x)" for r in slower[:5])
              + (f" and {len(slower) - 5} more" if len(slower) > 5 else ""))


def cmd_tune_merge(args) -> int:
    from mobilec.schedules import merge

    n = merge(args.sources, args.output)
    print(f"merged {n} records from {len(args.sources)} databases into {args.output}")
    return 0


def _open(args):
    import mobilec.runtime as mr
    from mobilec.errors import ConfigError

    if args.tracker or args.server:
        if args.cores:
            raise ConfigError("--cores applies to this machine; on a device over RPC mobilec runs on its big "
                             "cores (give --threads to choose how many)")
        return mr.connect(tracker=args.tracker, key=args.key, server=args.server).load(args.library,
                                                                                     threads=args.threads)
    return mr.load(args.library, threads=args.threads, cores=args.cores)


def cmd_run(args) -> int:
    from mobilec import present

    module = _open(args)
    x = present.load_input(module, args.input, args.image)
    outputs = module.run({module.inputs[0]["name"]: x})
    if module.manifest.task == "segmentation" or outputs[0].ndim == 4:
        path = present.write_mask(outputs[0], args.mask)
        print(f"wrote {path} ({outputs[0].shape[1]} classes)")
    else:
        rows = present.top5(outputs[0])
        _table("top-5", ["class", "probability"], [[c, f"{p:.4f}"] for c, p in rows])
    return 0


def cmd_bench(args) -> int:
    from mobilec import present
    from mobilec.errors import ConfigError
    from mobilec.runtime import random_feeds
    from mobilec.runtime.threads import plural

    if args.warmup < 0 or args.repeat < 1:
        raise ConfigError(f"--warmup {args.warmup} --repeat {args.repeat}: need --warmup >= 0 and --repeat >= 1")
    module = _open(args)
    results = present.compare(module, args.vs, random_feeds(module), args.warmup, args.repeat)
    first = results[0][1]
    print(f"latency on {plural(module.threads)}: " + (
        f"median of {first['rounds']} blocks of {plural(first['block'], 'call')}, engines alternating"
        if "rounds" in first else f"median of {args.repeat} runs timed on the device")
        + f", after {plural(args.warmup, 'warm-up call')}")
    _table("latency", ["name", "median ms", "min ms", "max ms", "ratio"], present.bench_rows(results))
    if args.kernels is not None:
        if args.kernels < 1:
            raise ConfigError(f"--kernels {args.kernels}: give how many of the slowest kernels to list (1 or more)")
        runs = max(5, args.repeat)
        rows = present.kernel_rows(module.kernel_times(runs), runs)
        _table(f"the {min(args.kernels, len(rows))} slowest of {len(rows)} kernels, timed inside {runs} inferences "
               f"(the timer adds about a microsecond to each call)", ["name", "calls", "us per inference", "share"],
               rows[:args.kernels])
    return 0


def cmd_demo(args) -> int:
    from mobilec.quickstart import run

    return run(args.model, Path(args.workdir), args.target, threads=args.threads, cores=args.cores,
               console=_console())


def cmd_adapt(args) -> int:
    from mobilec.adapt import AdaptConfig, Device, adapt
    from mobilec.errors import ConfigError
    from mobilec.present import live_lines

    if not args.local and not args.tracker:
        raise ConfigError("say where to measure: --tracker HOST:PORT --key KEY, or --local")
    device = Device(target=args.target, cpu=args.cpu, tracker=args.tracker, key=args.key, threads=args.threads)
    cfg = AdaptConfig(device=device, budget=args.budget, budget_ms=args.budget_ms, data=args.data,
                      synthetic=args.synthetic, steps=args.steps, weights=args.weights, input_size=args.input_size,
                      resolution=args.resolution, delta=args.delta, pretrain=args.pretrain,
                      final_steps=args.final_steps, max_steps=args.max_steps, extra_steps=args.extra_steps,
                      table=args.table, seed=args.seed)
    with live_lines() as progress:
        res = adapt(args.model, args.output, cfg, progress)
    first, last = res.steps[0], res.steps[-1]
    rows = [[s["step"], s["proposals"][s["chosen"]]["what"] if s.get("proposals") else "start",
             f"{s['predicted_ms']:.3f}", f"{s['measured_ms']:.3f}",
             f"{s['measured_ms'] / s['start_measured_ms']:.2f}x" if "start_measured_ms" in s else "1.00x",
             f"{s['table_error']:+.1%}", f"{s['accuracy']:.3f}", f"{s['reward']:.3f}"] for s in res.steps]
    _table(f"NetAdapt steps (accuracy: {res.accuracy_means})",
           ["step", "shrunk", "predicted ms", "measured ms", "measured / start", "table error", "accuracy", "reward"],
           rows)
    print(f"latency table: {res.table_measured} layers compiled and timed by this run, the rest reused from {args.table}")
    if res.final:
        f = res.final
        print(f"adapted: {f['measured_ms']:.3f} ms against the start's {f['start_measured_ms']:.3f} ms "
              f"({f['measured_ms'] / f['start_measured_ms']:.2f}x; target {res.target_ms:.3f} ms), timed in "
              f"alternating blocks; the table predicted {f['predicted_ms']:.3f} and {f['start_predicted_ms']:.3f} ms "
              f"({f['predicted_ms'] / f['measured_ms'] - 1:+.1%}, {f['start_predicted_ms'] / f['start_measured_ms'] - 1:+.1%})")
        print(f"accuracy {first['accuracy']:.3f} -> {f['accuracy']:.3f} after a final fine-tune of "
              f"{f['fine_tune_steps']} steps ({res.accuracy_means})")
    else:
        print(f"stopped after step {last['step']} (--max-steps); the same command continues")
    print(f"wrote {res.out}/adapted.onnx, adapted.json (`mobilec export {res.out}/adapted.json --weights "
          f"{res.out}/adapted.pt` rebuilds it), adapted.pt, log.json, adapt.png")
    return 0


def cmd_rpc(args) -> int:
    from mobilec.rpc import cli as rpc_cli

    return rpc_cli.dispatch(args)


# ---- parser ---------------------------------------------------------------------------------

def _remote_args(p) -> None:
    p.add_argument("--tracker", help="RPC tracker HOST:PORT: run on a device registered there")
    p.add_argument("--key", help="device key at the tracker")
    p.add_argument("--server", help="RPC server HOST:PORT (no tracker)")


def _thread_args(p) -> None:
    p.add_argument("--threads", type=int, help="threads for mobilec and onnxruntime alike (default: every core "
                   "this process may run on; on ARM, every big core)")
    p.add_argument("--cores", choices=["big", "little", "all"], help="which cores (default: big on ARM, all "
                   "elsewhere)")


def build_parser() -> argparse.ArgumentParser:
    from mobilec import __version__

    parser = argparse.ArgumentParser(prog="mobilec", description="MobileNet-class models from PyTorch to a "
                                     "native library for ARM phone CPUs, on Apache TVM.")
    parser.add_argument("--version", action="version", version=f"mobilec {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("demo", help="the main job: export, compile, run and compare with onnxruntime")
    p.add_argument("--model", default="mobilenet_v3_large")
    p.add_argument("--target", default="host")
    p.add_argument("--workdir", default="mobilec-demo")
    _thread_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the registered models with parameters and multiply-adds")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("export", help="export a registered model to ONNX")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--input-size", type=int, help="square input size (default: the model's)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    p.add_argument("--weights", help="a state_dict saved from the matching torchvision model")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quantize", help="post-training int8 quantisation into QDQ ONNX (onnxruntime's tools)")
    p.add_argument("model", help="an fp32 ONNX file")
    p.add_argument("-o", "--output", required=True, help="the QDQ ONNX file to write")
    p.add_argument("--images", help="a folder of calibration images (default: seeded random inputs)")
    p.add_argument("--random", type=int, default=16, help="random calibration inputs without --images")
    p.add_argument("--held-out", type=int, default=8, help="inputs kept out of calibration for the report")
    p.add_argument("--activation-type", choices=["uint8", "int8"], default="uint8")
    p.set_defaults(func=cmd_quantize)

    for verb, helptext in (("compile", "compile an ONNX model into one shared library for a target triple"),
                           ("inspect", "show what the fusion passes find in an ONNX model")):
        p = sub.add_parser(verb, help=helptext)
        p.add_argument("model", help="an ONNX file")
        p.add_argument("--input-shape", action="append", metavar="NAME=1x3x224x224",
                       help="fix an input's dynamic dims (repeatable)")
        if verb == "compile":
            p.add_argument("-o", "--output", required=True, help="the .so to write (manifest beside it)")
            p.add_argument("--target", default="host", help="target triple (see `mobilec compile --help`)")
            p.add_argument("--cpu", help="CPU preset, e.g. cortex-a76")
            p.add_argument("--num-cores", type=int)
            p.add_argument("--tuning-db", help="MetaSchedule database directory to take kernels from")
            p.add_argument("--force-tuning-db", action="store_true",
                           help="apply --tuning-db even where `mobilec tune` measured it slower for this model")
            p.add_argument("--dump-ir", help="write the IR after each pipeline phase to this directory")
            p.add_argument("--no-fuse", action="store_true", help="skip mobilec's fusion phase")
            p.add_argument("--no-integer", action="store_true",
                           help="run a quantised (QDQ) model in float, dequantising as the file says")
            p.add_argument("--no-default-schedules", action="store_true",
                           help="leave kernels the tuning database lacks to TVM's plain lowering (slow; "
                                "for comparison)")
            p.add_argument("--layout", choices=["NHWC", "NCHW"], default="NHWC",
                           help="the activations' layout through the network (NCHW: as imported, for comparison)")
        p.set_defaults(func=cmd_compile if verb == "compile" else cmd_inspect)

    p = sub.add_parser("tune", help="tune the model's kernels with MetaSchedule, measured on the device")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("--target", default="host")
    p.add_argument("--cpu")
    p.add_argument("--num-cores", type=int)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--tracker", help="RPC tracker HOST:PORT; measure on a device registered there")
    where.add_argument("--local", action="store_true", help="measure on this machine")
    p.add_argument("--key", help="device key at the tracker")
    p.add_argument("--trials", type=int, help="search trials for all tuned tasks, earlier runs included (the "
                   "default schedules measured first and failed candidates do not count); default 64, or with "
                   "--minutes as many as the time allows")
    p.add_argument("--minutes", type=float, help="time budget for this run's search: it stops after the "
                   "round that passes it, with every finished round in the database (a rerun continues); "
                   "every task's first round is measured first")
    p.add_argument("--per-round", type=int, default=16, help="candidates measured per round")
    p.add_argument("--build-limit", type=float, default=60.0, metavar="SECONDS",
                   help="a candidate whose build takes longer is a failed one and the search goes on")
    p.add_argument("--db", default="tuning-db", help="database root (a subdirectory per triple and cpu)")
    tasks = p.add_mutually_exclusive_group()
    tasks.add_argument("--all-tasks", dest="conv_only", action="store_false",
                       help="tune every kernel (the default): a kernel without a mobilec template is searched in "
                       "MetaSchedule's generic space, seeded with its default schedule")
    tasks.add_argument("--conv-only", dest="conv_only", action="store_true", help="tune the convolution kernels only")
    p.add_argument("--input-shape", action="append", metavar="NAME=1x3x224x224")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-verify", action="store_true", help="skip the end of the run: the whole model built with "
                   "and without the database and timed on the device (compile --tuning-db will not know whether "
                   "the database makes this model faster)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("adapt", help="NetAdapt: shrink a registered MobileNetV3 (or LR-ASPP) to a latency budget "
                       "measured on the device")
    p.add_argument("model", help="a registered model (see `mobilec models`) or a network file")
    p.add_argument("-o", "--output", required=True, help="folder for adapted.onnx/.json/.pt, log.json, adapt.png "
                   "(a rerun with the same folder resumes)")
    p.add_argument("--target", default="host")
    p.add_argument("--cpu")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--tracker", help="RPC tracker HOST:PORT; measure on a device registered there")
    where.add_argument("--local", action="store_true", help="measure on this machine")
    p.add_argument("--key", help="device key at the tracker")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", type=float, metavar="FRACTION", help="target latency as a fraction of the start's")
    budget.add_argument("--budget-ms", type=float, metavar="MS", help="target latency in milliseconds")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data", metavar="DIR", help="a folder of class subfolders of images (images without "
                      "subfolders: no labels, fine-tuning distils from the start)")
    data.add_argument("--synthetic", type=int, nargs="?", const=2048, metavar="N",
                      help="N generated labelled images (shapes x colours; default 2048)")
    p.add_argument("--steps", type=int, default=20, help="fine-tuning steps per proposal (default 20)")
    p.add_argument("--weights", help="starting weights: a torchvision state_dict (or adapted.pt for a network file)")
    p.add_argument("--input-size", type=int, help="the resolution latency is measured at (default: the model's)")
    p.add_argument("--resolution", type=int, default=64, help="image size for fine-tuning (default 64)")
    p.add_argument("--delta", type=float, default=0.025, help="each step cuts at least this share of the starting "
                   "latency, decaying by 0.96 per step (default 0.025; the paper: 0.01, more steps)")
    p.add_argument("--pretrain", type=int, help="steps fitting the start to labelled data first (default 600 with "
                   "labels, 0 without)")
    p.add_argument("--final-steps", type=int, default=300, help="the adapted network's final fine-tune (default 300)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (a rerun continues)")
    p.add_argument("--extra-steps", type=int, default=3, help="steps past the predicted target while the time "
                   "measured on the device misses it (default 3)")
    p.add_argument("--table", default="latency-table.json", help="the latency table, reused across runs")
    p.add_argument("--threads", type=int, help="threads to time with (default: the device's default)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("tune-merge", help="merge tuning databases (e.g. from several devices of one kind)")
    p.add_argument("sources", nargs="+", help="database directories (each checked before anything is written)")
    p.add_argument("-o", "--output", required=True, help="database directory to write (or add to)")
    p.set_defaults(func=cmd_tune_merge)

    p = sub.add_parser("run", help="run a compiled model: top-5 classes, or a mask PNG for segmentation")
    p.add_argument("library")
    p.add_argument("--input", help=".npy file with the input tensor")
    p.add_argument("--image", help="an image file (resized and normalised as for ImageNet)")
    p.add_argument("--mask", default="mask.png", help="where a segmentation mask goes")
    _thread_args(p)
    _remote_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="time a compiled model, optionally against onnxruntime")
    p.add_argument("library")
    p.add_argument("--vs", metavar="MODEL.onnx", help="also time onnxruntime on this ONNX file")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeat", type=int, default=50, help="timed calls per engine")
    p.add_argument("--kernels", type=int, nargs="?", const=15, metavar="N",
                   help="then list the N slowest kernels (default 15), each timed inside the model (this machine only)")
    _thread_args(p)
    _remote_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("rpc", help="RPC tracker, device servers, device list, emulated aarch64 device")
    from mobilec.rpc.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_rpc)
    return parser


# Errors a user can fix (bad file, name, shape, address...) are one line, no traceback: every
# mobilec error class derives from UserError; OSError is the user's files or machine. Anything
# else is a bug in mobilec and is said to be one.
def _user_errors() -> tuple:
    from mobilec.errors import UserError

    return (UserError, OSError)


def _stopped(signum: int) -> int:
    print("interrupted" if signum == signal.SIGINT else f"stopped by signal {signum}", file=sys.stderr)
    return 128 + signum


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    restore = stops.install()
    try:
        return args.func(args) or 0
    except KeyboardInterrupt as e:
        return _stopped(e.signum if isinstance(e, stops.Stopped) else signal.SIGINT)
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs below
        if os.environ.get("MOBILEC_DEBUG"):
            raise  # the full traceback, for bug reports
        if isinstance(e, _user_errors()):
            print(f"mobilec {args.verb}: error: {e}", file=sys.stderr)
            return 2
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"mobilec {args.verb}: internal error (a bug in mobilec): {type(e).__name__}: {first}\n"
              f"  rerun with MOBILEC_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 3
    finally:
        restore()
