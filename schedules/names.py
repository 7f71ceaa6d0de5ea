"""Kernel names a person reads: ``pw 112x112 16->64 +relu``, ``dw3x3 s2 56x56 72``,
``conv3x3 s2 224x224 3->16 +hswish``, ``se 28x28 72``, ``fc 1280->1000``.

Read from the kernel's TIR: its kind from the one classifier (``kinds.classify``, which the
default schedules also ask), its buffer shapes and its epilogue arithmetic, not from Relax's function
names (``fused_relax_nn_conv2d_relax_add_relax_multiply_..._multiply12``). Sizes are the input's:
a stride-2 kernel on 56x56 writes 28x28.
"""

from __future__ import annotations

from typing import Optional

import tvm
from tvm.s_tir import Schedule

from mobilec.schedules.kinds import Kind, classify, data_shape, reductions
from mobilec.schedules.loops import child_blocks, is_nhwc, is_reduction


def _kind(node) -> str:
    return type(node).__name__  # TVM 0.27 moved these classes between modules; their names stay


def _shape(buf) -> list[int]:
    return [int(d) for d in buf.shape]


def _nchw(shape: list[int]) -> list[int]:
    n, h, w, c = shape
    return [n, c, h, w]


def _const(node) -> Optional[float]:
    return float(node.value) if _kind(node) in ("FloatImm", "IntImm") else None


def _activation(sch: Schedule, blocks: list, local: list, out_shape: list[int]) -> list[str]:
    """What the epilogue blocks after a reduction compute: relu, relu6, hswish, hsigmoid, a
    residual add. Each TOPI elementwise op is one block storing one expression; ``local`` are the
    kernel's intermediate buffers (anything else is a parameter: weights, bias, a shortcut)."""
    tags: list[str] = []
    clip_hi = None
    for block in blocks:
        store = sch.get(block).body
        if _kind(store) != "BufferStore":
            continue
        value = store.value
        if _kind(value) in ("Max", "Min"):
            bounds = [_const(value.b)]
            if _kind(value.a) in ("Max", "Min"):
                bounds.append(_const(value.a.b))
            bounds = [v for v in bounds if v is not None]
            if len(bounds) == 2:  # clip(x, lo, hi): max(min(x, hi), lo)
                clip_hi = max(bounds)
                tags.append("clip")
            elif bounds == [0.0] and _kind(value) == "Max":  # max(x, 0)
                tags.append("relu")
        elif _kind(value) in ("Mul", "Add"):
            loads = [n for n in (value.a, value.b) if _kind(n) in ("TensorLoad", "BufferLoad")]
            if len(loads) != 2:
                continue
            is_local = [any(ld.source.same_as(b) for b in local) for ld in loads]
            if _kind(value) == "Mul" and all(is_local) and "clip" in tags:
                tags.append("x*gate")  # x * clip(f(x)): h-swish
            elif _kind(value) == "Add" and any(not loc and _shape(ld.source) == out_shape
                                               for loc, ld in zip(is_local, loads)):
                tags.append("residual")  # + a whole input tensor of the output's shape
    out = []
    if "clip" in tags:
        out.append("+hswish" if "x*gate" in tags else "+hsigmoid" if clip_hi == 1.0 else "+relu6")
    elif "relu" in tags:
        out.append("+relu")
    if "residual" in tags:
        out.append("+res")
    return out


def kernel_name(mod: tvm.IRModule, fallback: str = "kernel") -> str:
    """A short human name for the kernel ``mod["main"]``; for a kernel that is none of the kinds
    MobileNets are made of, ``fallback`` (TVM's function name) without its ``fused_``/``relax_``
    noise, e.g. ``mean`` or ``reshape``."""
    try:
        name = _name(mod)
    except Exception:  # noqa: BLE001 - a name is cosmetic: never fail tuning over it
        name = None
    return name or fallback.replace("fused_", "").replace("relax_", "")


def unique(names: list[str]) -> list[str]:
    """Two kernels may read the same (same shapes, an epilogue the name does not show): number
    the repeats, ``pw 28x28 40->120 #2``."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} #{seen[n]}")
    return out


def _name(mod: tvm.IRModule) -> Optional[str]:
    sch = Schedule(mod)
    root = sch.get_sblock("root")
    blocks = list(child_blocks(sch))
    local = list(sch.get(root).alloc_buffers)
    kernel = classify(sch)
    if kernel.kind == Kind.SQUEEZE_EXCITE:
        pooled = _shape(sch.get(reductions(sch)[0]).reads[0].source)  # the pool's input
        convs = [b for b in reductions(sch) if sch.get(b).name_hint.startswith("conv2d")]
        n, c, h, w = _nchw(pooled) if convs and is_nhwc(sch.get(convs[0]).name_hint) else pooled
        return f"se {h}x{w} {c}"
    if kernel.block is None:
        return None
    at = next(i for i, b in enumerate(blocks) if sch.get(b).name_hint == kernel.block)
    block = blocks[at]  # a block's RVs compare by identity: take the one in ``blocks``
    out = _shape(sch.get(block).writes[0].source)
    after = [b for b in blocks[at + 1:] if not is_reduction(sch, b)]
    acts = _activation(sch, after, local, out)
    if kernel.kind == Kind.MATMUL:
        weight = _shape(sch.get(block).reads[1].source)  # [K, N], or packed [N/b, K, b]
        return " ".join([f"fc {weight[-2]}->{out[-1]}"] + acts)
    src = data_shape(sch, block)
    weight = _shape(sch.get(block).reads[1].source)
    if kernel.nhwc:  # NHWC data; HWIO weights, or packed [O/b, H, W, I, b]
        src, out = _nchw(src), _nchw(out)
        hw = weight[1:3] if len(weight) == 5 else weight[:2]
        weight = [out[1], weight[-2] if len(weight) == 5 else weight[2]] + hw  # as OIHW
    cin, h, w = src[1], src[2], src[3]
    cout = out[1]
    stride = max(1, round(h / out[2])) if out[2] else 1
    k = [1, 1] if kernel.kernel_1x1 else weight[2:]
    ks = f"{k[0]}x{k[1]}"
    s = f" s{stride}" if stride > 1 else ""
    head = {Kind.DEPTHWISE: f"dw{ks}{s} {h}x{w} {cin}", Kind.GROUPED: f"gconv{ks}{s} {h}x{w} {cin}->{cout}",
            Kind.POINTWISE: f"pw {h}x{w} {cin}->{cout}"}.get(kernel.kind, f"conv{ks}{s} {h}x{w} {cin}->{cout}")
    return " ".join([head] + acts)
