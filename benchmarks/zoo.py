"""Mobile vision models nobody here wrote: export, compile (host and aarch64), check, time.

    .venv/bin/pip install -e ".[zoo]" $(.ci/torch-index)
    .venv/bin/python benchmarks/zoo.py [--models efficientnet_b0 resnet18 ...] [--threads 2]
        [--seconds 8] [--compile-timeout 600] [--no-arm] [--retime] [--out benchmarks/results] [--readme]

Per model of ``MODELS`` (timm, random weights with batch-norm statistics measured on random images, batch 1, fp32, the model's own input size, exported
by PyTorch's TorchScript exporter at opset 17 as ``mobilec export`` does): the seconds
``mobilec compile`` takes for the host and for aarch64-linux-gnu (Cortex-A76; ``--no-arm`` skips
it), mobilec's and onnxruntime's largest errors against PyTorch in float64 (relative to its largest
output magnitude), and mobilec against onnxruntime on the same threads, timed by
``mobilec.runtime.timing.interleaved`` (engines alternating in blocks of 5 calls, in a shuffled
order each round, for at least ``--seconds``; the median of the block medians) in a process of its
own per model, untuned, no database. A shared VM has slow spells of seconds (measured here: 1-5 s
at about 1.8x, several times a minute): timed for under a second, one model read 1.90x in one run
and 1.11x in the next, so each model is timed for several seconds, long enough for the engines'
blocks to share the spells. ``--retime`` times the libraries a previous run left in --out again,
keeping that run's export and compile results. A compile runs as the
CLI in a subprocess with a time limit, so a model that does not compile, or not in time, is a
row of the table saying so, not the end of the run. Writes zoo.json, zoo.md and zoo.png (the
ratio per model) under --out; --readme appends the table, dated and naming this machine's CPU, to
docs/performance.md.

**torchvision.** timm imports torchvision, and PyPI's Linux x86_64 torchvision wheel is built
against PyPI's CUDA torch: with the CPU torch mobilec pins, its C extension fails to load
(``libc10_cuda.so``) and ``import torchvision`` then fails registering fake kernels for two of
its operators. The ``zoo`` extra pins the torchvision release built for torch 2.13.0; installed
with ``$(.ci/torch-index)`` as above, pip takes its CPU build (``0.28.0+cpu``) from PyTorch's CPU
index, the same place torch comes from, and everything loads. Where that index cannot be reached
(an offline mirror holding only PyPI's wheel), ``import_timm`` declares the schemas of those two
operators (``torchvision::nms``, ``torchvision::qnms``) before importing torchvision, so the
import succeeds; the models use no torchvision operator, and calling one would fail loudly (no
kernel), never silently.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = [  # (timm name, what it brings)
    ("mobilenetv2_100", "inverted residuals, ReLU6"),
    ("mobilenetv3_large_100", "h-swish, hard-sigmoid SE"),
    ("tf_mobilenetv3_large_100", "TF-ported: asymmetric 'same' padding"),
    ("mnasnet_100", "NAS, ReLU"),
    ("fbnetv3_b", "h-swish, SE, odd widths"),
    ("hardcorenas_a", "latency-NAS, SE"),
    ("lcnet_100", "depthwise + pointwise, h-swish"),
    ("ghostnet_100", "ghost modules: channel concat"),
    ("efficientnet_lite0", "ReLU6, no SE"),
    ("efficientnet_b0", "SiLU, sigmoid-gated SE"),
    ("mixnet_s", "mixed kernel sizes, SiLU"),
    ("tinynet_e", "scaled EfficientNet"),
    ("regnety_004", "grouped 3x3, SE"),
    ("mobilenetv4_conv_small", "full 3x3 convs (fused inverted bottlenecks)"),
    ("mobileone_s0", "re-parameterised 3x3, grouped"),
    ("repvit_m0_9", "re-parameterised depthwise, GELU-free SE"),
    ("efficientnetv2_rw_t", "FusedMBConv: full 3x3 expansions, SiLU"),
    ("resnet18", "plain 3x3 convs, 64-512 channels"),
    ("mobilenetv4_hybrid_medium", "attention blocks"),
    ("mobilevit_xxs", "attention, LayerNorm, unfold/fold"),
    ("edgenext_xx_small", "attention, LayerNorm, GELU"),
]
ARM = ("aarch64-linux-gnu", "cortex-a76")
TOLERANCE = 1e-3  # mobilec's largest error against the float64 reference, relative to its largest magnitude
#                   (or twice onnxruntime's, where float32 itself is that far off)


@functools.cache
def import_timm():
    """timm, with torchvision importable even where its C extension cannot load (see above)."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is not None:
        extension = next(Path(spec.origin).parent.glob("_C*.so"), None)
        try:
            if extension is not None:
                torch.ops.load_library(str(extension))
        except OSError:
            lib = torch.library.Library("torchvision", "DEF")  # noqa: the two unconditional fake kernels' ops
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            import_timm.torchvision_ops = lib  # a Library unregisters its definitions when collected
    import timm

    return timm


def export(name: str, out: Path) -> dict:
    import torch

    from mobilec.frontends.export import ExportConfig, export_onnx

    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    calibrate_norms(model, size)
    if size[1] != size[2]:
        raise ValueError(f"{name}: input {size} is not square")
    path = out / f"{name}.onnx"
    result = export_onnx(model, path, ExportConfig(input_size=size[-1]))
    params = sum(p.numel() for p in model.parameters())
    x = np.random.default_rng(0).standard_normal(result.input_shape).astype(np.float32)  # mr.random_feeds' input
    with torch.no_grad():  # the float64 reference both engines are measured against
        np.save(out / f"{name}.ref.npy", model.double()(torch.from_numpy(x).double()).numpy())
    return {"onnx": str(path), "input": list(result.input_shape), "params_m": round(params / 1e6, 2)}


def calibrate_norms(model, size: tuple, batches: int = 4) -> None:
    """Batch norms' running statistics measured on random images, as training would leave them:
    fresh ones (mean 0, variance 1) let activations grow layer after layer to where float32's
    rounding dominates the output (EfficientNetV2-T: logits near 1000, float32 PyTorch 3e-3 away
    from float64), and every engine's error says more about that than about the engine."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches
    model.train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn((8, *size), generator=generator))
    model.eval()


def compile_once(onnx_path: str, lib: Path, timeout: float, target: str, cpu: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "mobilec", "compile", onnx_path, "--target", target, "-o", str(lib)]
    if cpu:
        cmd += ["--cpu", cpu]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "error": f"no library after {timeout:.0f} s"}
    seconds = round(time.perf_counter() - start, 1)
    if done.returncode:
        return {"seconds": seconds, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    manifest = json.loads(lib.with_suffix(".json").read_text())
    return {"seconds": seconds, "kernels": manifest.get("default_schedules", {})}


def worker(args) -> None:
    """Check and time one host library against onnxruntime (its own process: one thread pool)."""
    import mobilec.runtime as mr
    from mobilec.present import onnxruntime_session
    from mobilec.runtime.timing import interleaved

    lib = mr.load(args.library, threads=args.threads)
    session = onnxruntime_session(args.onnx, args.threads)
    feeds = mr.random_feeds(lib, seed=0)
    ref = np.load(args.onnx[:-len(".onnx")] + ".ref.npy")
    scale = max(float(np.abs(ref).max()), 1e-12)
    error = float(np.abs(lib.run(feeds)[0] - ref).max() / scale)
    out = {"error": error, "ort_error": float(np.abs(session.run(None, feeds)[0] - ref).max() / scale)}
    if error <= max(TOLERANCE, 2 * out["ort_error"]):
        times = interleaved({"mobilec": lambda: lib.run(feeds), "onnxruntime": lambda: session.run(None, feeds)},
                            warmup=10, rounds=4, block=5, min_seconds=args.seconds)
        out |= {"mobilec_ms": times["mobilec"]["median_ms"], "onnxruntime_ms": times["onnxruntime"]["median_ms"]}
        out["ratio"] = out["mobilec_ms"] / out["onnxruntime_ms"]
    print(json.dumps(out))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_model(name: str, args, out: Path, before: dict | None = None) -> dict:
    """One row: exported, compiled and timed; with ``before`` (a previous run's row whose host
    library is still there), timed again only."""
    if before is not None:
        row = {k: v for k, v in before.items() if k in ("model", "onnx", "input", "params_m", "host", "arm")}
        host = row["host"]
    else:
        row: dict = {"model": name}
        try:
            row |= export(name, out)
        except Exception as e:  # a model the exporter or timm refuses is a row saying so
            return row | {"error": f"export: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        host = compile_once(row["onnx"], out / f"{name}.so", args.compile_timeout, "host")
        row["host"] = host
        if not args.no_arm:
            row["arm"] = compile_once(row["onnx"], out / f"{name}-a76.so", args.compile_timeout, ARM[0], ARM[1])
    if "error" not in host:
        done = subprocess.run([sys.executable, __file__, "--worker", "--library", str(out / f"{name}.so"),
                               "--onnx", row["onnx"], "--threads", str(args.threads), "--seconds", str(args.seconds)],
                              capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        row |= json.loads(lines[-1]) if done.returncode == 0 and lines else {
            "error": f"run: {(done.stderr.strip().splitlines() or ['?'])[-1]}"}
    return row


def table(rows: list[dict], threads: int) -> str:
    def secs(c):
        return "-" if c is None else (f"{c['seconds']:.0f}" if "error" not in c else c["error"][:60])

    lines = [f"| model | what it brings | host compile s | aarch64 compile s | max rel. error (onnxruntime's) | mobilec ms | "
             f"onnxruntime ms | mobilec / onnxruntime ({threads} threads) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    notes = dict(MODELS)
    for r in rows:
        if "ratio" in r:
            timing = f"{r['error']:.1e} ({r['ort_error']:.1e}) | {r['mobilec_ms']:.2f} | {r['onnxruntime_ms']:.2f} | {r['ratio']:.2f}x"
        elif isinstance(r.get("error"), float):
            timing = f"{r['error']:.1e} (disagrees) | | | "
        else:
            timing = f"{str(r.get('error', '-'))[:80]} | | | "
        lines.append(f"| {r['model']} | {notes.get(r['model'], '')} | {secs(r.get('host'))} | {secs(r.get('arm'))} | {timing} |")
    ratios = sorted(r["ratio"] for r in rows if "ratio" in r)
    if ratios:
        lines.append(f"\nmedian {np.median(ratios):.2f}x, worst {ratios[-1]:.2f}x over {len(ratios)} models timed "
                     f"of {len(rows)}")
    return "\n".join(lines)


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if "ratio" in r]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(timed) + 1.2))
    ax.barh([r["model"] for r in timed], [r["ratio"] for r in timed],
            color=["tab:green" if r["ratio"] <= 1.0 else "tab:orange" for r in timed])
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("mobilec / onnxruntime latency (lower is better)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=[m for m, _ in MODELS])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8.0, help="time each model for at least this long")
    p.add_argument("--compile-timeout", type=float, default=600)
    p.add_argument("--no-arm", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--readme", action="store_true")
    p.add_argument("--retime", action="store_true", help="time the libraries of the last run in --out again")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--library", help=argparse.SUPPRESS)
    p.add_argument("--onnx", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    out = Path(args.out)
    models = out / "zoo"
    models.mkdir(parents=True, exist_ok=True)
    before = {}
    if args.retime:
        last = out / "zoo.json"
        if not last.exists():
            p.error(f"--retime: no earlier run in {out} ({last} is missing)")
        before = {r["model"]: r for r in json.loads(last.read_text())
                  if isinstance(r.get("host"), dict) and (models / f"{r['model']}.so").exists()}
    rows = []
    for name in args.models:
        rows.append(run_model(name, args, models, before.get(name)))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows, args.threads)
    print(text)
    (out / "zoo.json").write_text(json.dumps(rows, indent=1))
    (out / "zoo.md").write_text(text + "\n")
    chart(rows, out / "zoo.png")
    if args.readme:
        with open(ROOT / "docs" / "performance.md", "a") as f:
            f.write(f"\n## Model zoo, {datetime.date.today().isoformat()}, {cpu_name()}, {args.threads} threads, "
                    f"untuned\n\n{text}\n\n![mobilec / onnxruntime per model](../benchmarks/results/zoo.png)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
