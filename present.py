"""What ``mobilec run``, ``mobilec bench`` and ``mobilec demo`` show: inputs from files, top-5, masks,
and latencies timed fairly against onnxruntime. Command-line side only: it may use pillow, rich and
onnxruntime; the thin runtime (``mobilec.runtime``) never imports it."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mobilec.errors import ConfigError
from mobilec.runtime.threads import plural

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_input(module, npy: Optional[str], image: Optional[str]) -> np.ndarray:
    spec = module.inputs[0]
    if npy:
        return np.load(npy)
    if image:
        return image_tensor(image, spec["shape"], spec["dtype"], "--image")
    print("no --input or --image: using a seeded random input")
    from mobilec.runtime import random_feeds

    return random_feeds(module)[spec["name"]]


def image_tensor(image: str, shape, dtype: str = "float32", flag: str = "--image") -> np.ndarray:
    """One image file as the registry models' input: RGB resized to the input's size, scaled to [0, 1],
    normalised with ImageNet's mean and deviation, NCHW, repeated over the batch."""
    try:
        from PIL import Image, UnidentifiedImageError  # only this path needs pillow
    except ImportError:
        raise ConfigError(f"{flag} needs pillow (pip install pillow), or pass --input x.npy") from None

    n, c, h, w = shape
    try:
        img = Image.open(image).convert("RGB").resize((w, h), Image.BILINEAR)
    except UnidentifiedImageError:
        raise ConfigError(f"{flag} {image}: not an image pillow can read (PNG, JPEG, ...); give a photo, "
                         f"or an input tensor with --input x.npy") from None
    x = (np.asarray(img, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.repeat(x.transpose(2, 0, 1)[None], n, axis=0).astype(dtype)


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


# ---- timing ---------------------------------------------------------------------------------

def blocks_for(repeat: int) -> tuple[int, int]:
    """(rounds, calls per block) giving at least ``repeat`` timed calls per engine: blocks of up
    to 5 calls, and as many rounds as that allows (so the engines alternate often)."""
    if repeat < 1:
        raise ConfigError(f"repeat={repeat}: time at least one call")
    block = min(5, max(1, repeat // 10))
    return math.ceil(repeat / block), block


def interleaved(engines: dict[str, Callable[[], object]], warmup: int = 5, rounds: int = 10,
                block: int = 5) -> dict[str, dict]:
    """Time several engines fairly on one machine: ``warmup`` untimed calls of each, then ``rounds``
    rounds in which every engine runs a block of ``block`` timed calls, in a new order each round
    (``alternating``). Engines alternate in blocks because a thread pool still spinning after one
    engine's last call (TVM's and onnxruntime's both spin) steals cores from whatever runs next;
    the first call of a block pays for it and the block's median drops it. Per engine: the median
    of the block medians, min and max over every call (ms)."""
    if warmup < 0 or rounds < 1 or block < 1:
        raise ConfigError(f"warmup={warmup}, rounds={rounds}, block={block}: need warmup >= 0, rounds >= 1, block >= 1")
    names = list(engines)
    for i in range(warmup):
        for name in names[i % len(names):] + names[:i % len(names)]:
            engines[name]()

    def timed(fn):
        def run_block() -> list[float]:
            ms = []
            for _ in range(block):
                t = time.perf_counter()
                fn()
                ms.append((time.perf_counter() - t) * 1e3)
            return ms
        return run_block

    return alternating({name: timed(fn) for name, fn in engines.items()}, rounds)


SETTLE_S = 0.02  # idle between blocks: longer than TVM's, onnxruntime's and OpenMP's spin-waits


def alternating(blocks: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, dict]:
    """The alternation ``interleaved`` times with: ``rounds`` rounds, each engine's ``blocks[name]()``
    once per round (returning its calls' times, ms), in a new order each round (a seeded shuffle:
    the same every run). Also for engines timed elsewhere (a device's own timer: one median per
    block).

    Each block starts after ``SETTLE_S`` idle, and the order is not a rotation: a rotation keeps
    the cyclic order, so with three or more engines each one always ran right after the same other
    engine and paid for that engine's spinning pool in every round (measured: mobilec fp32 timed
    after onnxruntime's int8 read 4.3-4.5 ms where it runs 2.9)."""
    names = list(blocks)
    medians: dict[str, list[float]] = {n: [] for n in names}
    calls: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in random.Random(r).sample(names, len(names)):
            time.sleep(SETTLE_S)  # the last engine's pool stops spinning before this one is timed
            ms = blocks[name]()
            medians[name].append(float(np.median(ms)))
            calls[name] += ms
    return {n: {"median_ms": float(np.median(medians[n])), "min_ms": min(calls[n]), "max_ms": max(calls[n]),
                "rounds": rounds, "block": len(calls[n]) // rounds, "calls": len(calls[n])} for n in names}


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
