"""int8 against fp32, mobilec against onnxruntime, measured in one run on this host.

    .venv/bin/python benchmarks/int8.py [--models mobilenet_v3_large mobilenet_v3_small
        lraspp_mobilenet_v3_large] [--threads 2] [--repeat 60] [--calibration 16]
        [--quantizer mobilec|pytorch]

Per model: export fp32 (the registry's seeded weights), ``mobilec quantize`` it (QDQ, calibrated
on seeded random inputs; ``--quantizer pytorch``: PyTorch's own FX quantisation and ONNX export
of the same weights, ``frontends/torch_int8.py``), compile both with the defaults, then time in
one process, engines alternating in blocks (``mobilec.runtime.timing.interleaved``): mobilec fp32, mobilec int8, onnxruntime
fp32 and onnxruntime int8 (all graph optimisations, on the same QDQ file).

Numerics, on held-out seeded inputs:
- mobilec int8 against the QDQ file's own semantics: onnxruntime with graph optimisations off runs
  every DequantizeLinear / op / QuantizeLinear as the file says (the reference);
- onnxruntime's optimised int8 against that same reference (its fused integer kernels);
- both int8 outputs' cosine to the fp32 model's.
"Steps" are differences in units of the output's quantisation step.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from mobilec.present import onnxruntime_session
from mobilec.runtime.timing import interleaved


def measure(name: str, tmp: Path, threads: int, repeat: int, calibration: int, quantizer: str = "mobilec") -> dict:
    from mobilec.compiler import CompileConfig, compile_model
    from mobilec.frontends import export_model
    from mobilec.frontends.quantize import QuantizeConfig, agreement, output_step, quantize_model, reference_session
    from mobilec.runtime import load

    fp32_onnx, int8_onnx = tmp / f"{name}.onnx", tmp / f"{name}-int8.onnx"
    export_model(name, fp32_onnx)
    if quantizer == "pytorch":
        from mobilec.frontends.torch_int8 import export_pytorch_int8

        export_pytorch_int8(name, int8_onnx, calibration=calibration)
    else:
        quantize_model(fp32_onnx, int8_onnx, QuantizeConfig(random=calibration))
    libs = {}
    for label, src in (("fp32", fp32_onnx), ("int8", int8_onnx)):
        res = compile_model(src, tmp / f"{name}-{label}.so", CompileConfig())
        libs[label] = load(res.library, threads=threads)
        if label == "int8":
            kernels = dict(res.report.int8)
            left_float = len(res.report.float_quantized)
    reference = reference_session(int8_onnx)
    sessions = {label: onnxruntime_session(str(p), threads) for label, p in (("fp32", fp32_onnx), ("int8", int8_onnx))}
    feed = sessions["fp32"].get_inputs()[0].name
    shape = libs["fp32"].inputs[0]["shape"]
    step = output_step(int8_onnx)
    numerics = {"mobilec_steps": [], "ort_steps": [], "mobilec_cos": [], "ort_cos": [], "mobilec_exact": [],
                "vs_ort_steps": [], "vs_ort_exact": []}
    for seed in range(100, 104):
        x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        ref = reference.run(None, {feed: x})[0]
        fp32 = sessions["fp32"].run(None, {feed: x})[0]
        ours, theirs = libs["int8"](x), sessions["int8"].run(None, {feed: x})[0]
        numerics["mobilec_steps"].append(float(np.abs(ours - ref).max()) / step)
        numerics["mobilec_exact"].append(float(np.mean(np.abs(ours - ref) <= step / 2)))
        numerics["ort_steps"].append(float(np.abs(theirs - ref).max()) / step)
        numerics["vs_ort_steps"].append(float(np.abs(ours - theirs).max()) / step)  # the literal measure
        numerics["vs_ort_exact"].append(float(np.mean(np.abs(ours - theirs) <= step * 1.001)))
        numerics["mobilec_cos"].append(agreement(fp32, ours)[1])
        numerics["ort_cos"].append(agreement(fp32, theirs)[1])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    engines = {"mobilec fp32": lambda: libs["fp32"](x), "mobilec int8": lambda: libs["int8"](x),
               "onnxruntime fp32": lambda: sessions["fp32"].run(None, {feed: x}),
               "onnxruntime int8": lambda: sessions["int8"].run(None, {feed: x})}
    rounds = max(2, repeat // 5)
    timed = interleaved(engines, warmup=5, rounds=rounds, block=max(1, repeat // rounds))
    return {"model": name, "ms": {k: v["median_ms"] for k, v in timed.items()}, "kernels": kernels,
            "left_float": left_float,
            **{k: (min(v) if "exact" in k else max(v) if "steps" in k else float(np.mean(v)))
               for k, v in numerics.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mobilenet_v3_large", "mobilenet_v3_small"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=60)
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--quantizer", choices=["mobilec", "pytorch"], default="mobilec",
                    help="who writes the QDQ file: mobilec quantize, or PyTorch's FX quantisation and ONNX export")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobilec-int8-") as tmp:
        for name in args.models:
            r = measure(name, Path(tmp), args.threads, args.repeat, args.calibration, args.quantizer)
            rows.append(r)
            print(f"{name}: integer kernels {r['kernels']}, quantised ops left float: {r['left_float']}", flush=True)
    print(f"\nQDQ files by {args.quantizer}; {args.threads} threads; median ms of block medians, engines alternating\n")
    print("| model | mobilec fp32 | mobilec int8 | onnxruntime fp32 | onnxruntime int8 | int8 / mobilec fp32 "
          "| int8 / onnxruntime int8 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ms = r["ms"]
        print(f"| {r['model']} | {ms['mobilec fp32']:.2f} | {ms['mobilec int8']:.2f} | {ms['onnxruntime fp32']:.2f} "
              f"| {ms['onnxruntime int8']:.2f} | {ms['mobilec int8'] / ms['mobilec fp32']:.2f}x "
              f"| {ms['mobilec int8'] / ms['onnxruntime int8']:.2f}x |")
    print("\nnumerics against the QDQ reference (onnxruntime, optimisations off), 4 held-out inputs\n")
    print("| model | mobilec int8: max steps | elements within half a step | onnxruntime int8: max steps "
          "| cosine to fp32: mobilec int8 | onnxruntime int8 | mobilec int8 against onnxruntime int8: max steps "
          "| elements within one step (worst input) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['mobilec_steps']:.1f} | {r['mobilec_exact']:.2%} | {r['ort_steps']:.1f} "
              f"| {r['mobilec_cos']:.4f} | {r['ort_cos']:.4f} | {r['vs_ort_steps']:.1f} | {r['vs_ort_exact']:.2%} |")


if __name__ == "__main__":
    main()
