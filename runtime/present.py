"""What ``mobilec run`` and ``mobilec bench`` show: inputs from files, top-5, masks, latency tables."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_input(module, npy: Optional[str], image: Optional[str]) -> np.ndarray:
    spec = module.inputs[0]
    if npy:
        return np.load(npy)
    if image:
        try:
            from PIL import Image  # only this path needs pillow
        except ImportError:
            raise RuntimeError("--image needs pillow (pip install pillow), or pass --input x.npy") from None

        n, c, h, w = spec["shape"]
        img = Image.open(image).convert("RGB").resize((w, h), Image.BILINEAR)
        x = (np.asarray(img, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return np.repeat(x.transpose(2, 0, 1)[None], n, axis=0).astype(spec["dtype"])
    rng = np.random.default_rng(0)
    print("no --input or --image: using a seeded random input")
    return rng.standard_normal(spec["shape"]).astype(spec["dtype"])


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
        raise RuntimeError("writing a mask PNG needs pillow (pip install pillow)") from None

    labels = scores[0].argmax(axis=0).astype(np.uint8)
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    palette[0] = 0
    img = Image.fromarray(labels, mode="P")
    img.putpalette(palette.flatten().tolist())
    img.save(path)
    return Path(path)


def onnxruntime_latency(onnx_path: str, feeds: dict, warmup: int, repeat: int, threads: int) -> dict:
    import time

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        sess.run(None, feeds)
    ms = []
    for _ in range(repeat):
        t = time.perf_counter()
        sess.run(None, feeds)
        ms.append((time.perf_counter() - t) * 1e3)
    ms = np.array(ms)
    return {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def bench_rows(module, vs: Optional[str], warmup: int, repeat: int, threads: Optional[int]) -> list[list]:
    rng = np.random.default_rng(0)
    feeds = {i["name"]: rng.standard_normal(i["shape"]).astype(i["dtype"]) for i in module.inputs}
    mine = module.benchmark(warmup=warmup, repeat=repeat, feeds=feeds)
    results = [("mobilec " + module.path.name, mine)]
    if vs:
        threads = threads or int(module.manifest.target.get("num-cores", 1))
        results.append((f"onnxruntime ({threads} threads)", onnxruntime_latency(vs, feeds, warmup, repeat, threads)))
    base = results[-1][1]["median_ms"]
    return [[name, f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}", f"{r['max_ms']:.2f}",
             f"{r['median_ms'] / base:.2f}x"] for name, r in results]
