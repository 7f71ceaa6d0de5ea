"""What ``mobilec run``, ``mobilec bench`` and ``mobilec demo`` show: inputs from files, top-5, masks,
and latencies timed against onnxruntime (``runtime/timing.py`` times them). Command-line side only:
it may use pillow, rich and onnxruntime; nothing below the command line imports it."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from mobilec.errors import ConfigError
from mobilec.runtime.images import image_tensor
from mobilec.runtime.threads import plural
from mobilec.runtime.timing import blocks_for, interleaved


def load_input(module, npy: Optional[str], image: Optional[str]) -> np.ndarray:
    spec = module.inputs[0]
    if npy:
        return np.load(npy)
    if image:
        return image_tensor(image, spec["shape"], spec["dtype"], "--image")
    print("no --input or --image: using a seeded random input")
    from mobilec.runtime import random_feeds

    return random_feeds(module)[spec["name"]]


def top5(logits: np.ndarray) -> list[tuple[int, float]]:
    z = logits.reshape(logits.shape[0], -1)[0].astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    idx = np.argsort(-p)[:5]
    return [(int(i), float(p[i])) for i in idx]


def write_mask(scores: np.ndarray, path: str) -> Path:
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("writing a mask PNG needs pillow (pip install pillow)") from None

    labels = scores[0].argmax(axis=0).astype(np.uint8)
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    palette[0] = 0
    img = Image.fromarray(labels, mode="P")
    img.putpalette(palette.flatten().tolist())
    img.save(path)
    return Path(path)


def onnxruntime_session(onnx_path: str, threads: int):
    """An onnxruntime CPU session on ``threads`` intra-op threads (the calling thread counts, as in
    TVM's pool), one inter-op thread, all graph optimisations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def onnxruntime_latency(onnx_path: str, feeds: dict, warmup: int, repeat: int, threads: int) -> dict:
    """onnxruntime alone (for scripts comparing runs made apart); ``compare`` times it fairly
    against a mobilec module."""
    sess = onnxruntime_session(onnx_path, threads)
    rounds, block = blocks_for(repeat)
    return interleaved({"onnxruntime": lambda: sess.run(None, feeds)}, warmup, rounds, block)["onnxruntime"]


def compare(module, onnx_path: Optional[str], feeds: dict, warmup: int, repeat: int) -> list[tuple[str, dict]]:
    """[(label, latency)] for the module and, with ``onnx_path``, onnxruntime on as many threads.
    A local module and onnxruntime are timed interleaved by ``interleaved`` through their Python
    calls (numpy in, numpy out for both); a remote module is timed on its device by
    ``Module.benchmark`` and onnxruntime here, so that pair is labelled by where each ran."""
    name = f"mobilec {module.path.name}"
    if module._remote is None:
        engines = {name: lambda: module.run(feeds)}
        if onnx_path:
            sess = onnxruntime_session(onnx_path, module.threads)
            engines["onnxruntime"] = lambda: sess.run(None, feeds)
        rounds, block = blocks_for(repeat)
        timed = interleaved(engines, warmup, rounds, block)
        return [(f"{n} ({plural(module.threads)})", timed[n]) for n in engines]
    rows = [(f"{name} on {module._remote} ({plural(module.threads)})",
             module.benchmark(warmup=warmup, repeat=repeat, feeds=feeds))]
    if onnx_path:
        import os

        threads = min(module.threads, len(os.sched_getaffinity(0)))
        sess = onnxruntime_session(onnx_path, threads)
        rounds, block = blocks_for(repeat)
        timed = interleaved({"onnxruntime": lambda: sess.run(None, feeds)}, warmup, rounds, block)
        rows.append((f"onnxruntime on this host ({plural(threads)})", timed["onnxruntime"]))
    return rows


def kernel_rows(times: dict[str, list[float]], runs: int) -> list[list[str]]:
    """Table rows of the kernels in ``Module.kernel_times`` over ``runs`` inferences, slowest first:
    kernel, calls per inference, microseconds per inference, share of the kernels' summed time. The
    VM's own builtins (``vm.builtin.*``: allocation, shape checks) are left out: their times are
    mostly the timer's, which wraps each one's returned object for Python."""
    from mobilec.runtime import per_inference_us

    each = {name: per_inference_us(calls, runs) for name, calls in times.items() if not name.startswith("vm.builtin.")}
    total = sum(each.values()) or 1.0
    return [[name, f"{len(times[name]) / runs:g}", f"{us:.1f}", f"{us / total:.1%}"]
            for name, us in sorted(each.items(), key=lambda kv: -kv[1])]


def bench_rows(results: list[tuple[str, dict]]) -> list[list[str]]:
    """Table rows: name, median, min, max, ratio to the last row (onnxruntime, when compared)."""
    base = results[-1][1]["median_ms"]
    return [[name, f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}", f"{r['max_ms']:.2f}",
             f"{r['median_ms'] / base:.2f}x"] for name, r in results]


@contextlib.contextmanager
def compile_progress(what: str, stream=None):
    """The ``progress`` callback of ``compile_model`` for the command line: on a terminal one live
    status line (rich) with the step, the kernel n of N and the seconds so far; otherwise one plain
    line per step (no kernel lines), so logs stay short."""
    stream = stream or sys.stderr
    start = time.perf_counter()
    if stream.isatty():
        from rich.console import Console

        with Console(file=stream).status(f"compiling {what}") as status:
            def update(stage: str, detail: str, n: int, of: int) -> None:
                count = f" {n} of {of}" if of else ""
                status.update(f"compiling {what}: {stage}{count}{': ' + detail if detail else ''} "
                              f"({time.perf_counter() - start:.0f} s)")
            yield update
        return

    def line(stage: str, detail: str, n: int, of: int) -> None:
        if not detail:
            count = f" ({n} of {of})" if of else ""
            print(f"compiling {what}: {stage}{count} at {time.perf_counter() - start:.1f} s", file=stream, flush=True)
    yield line


@contextlib.contextmanager
def live_lines(stream=None):
    """A ``progress(message, transient)`` callback for long work: on a terminal, transient
    messages are one live status line (rich) and the others are printed above it; otherwise only
    the others are printed, one plain line each, with the seconds so far."""
    stream = stream or sys.stderr
    start = time.perf_counter()
    if stream.isatty():
        from rich.console import Console

        console = Console(file=stream)
        with console.status("starting") as status:
            def update(message: str, transient: bool) -> None:
                if transient:
                    status.update(f"{message} ({time.perf_counter() - start:.0f} s)")
                else:
                    console.print(message, highlight=False)
            yield update
        return

    def line(message: str, transient: bool) -> None:
        if not transient:
            print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=stream, flush=True)
    yield line
