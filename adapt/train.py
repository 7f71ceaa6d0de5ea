"""Fine-tuning and scoring for NetAdapt, on PyTorch's CPU (or a GPU when there is one).

With labels the loss is cross-entropy and accuracy is top-1 on the held-out images. Without,
the network learns the starting network's outputs (distillation: KL divergence at temperature
``TEMPERATURE``), and "accuracy" is top-1 agreement with the starting network on the held-out images.
A segmentation network (LR-ASPP) is trained per pixel the same way and scored by mean IoU over
the classes present, against the labels or the starting network's classes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from mobilec.adapt.data import Dataset

TEMPERATURE = 2.0
EVAL_BATCH = 128
BN_MOMENTUM = 0.1


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _scores(model: nn.Module, x: torch.Tensor):
    """``model``'s outputs on ``x``, a batch at a time (no gradients)."""
    dev = device()
    model.to(dev).eval()
    with torch.no_grad():
        for i in range(0, len(x), EVAL_BATCH):
            yield model(x[i:i + EVAL_BATCH].to(dev)).cpu()


def fine_tune(model: nn.Module, data: Dataset, steps: int, teacher: Optional[nn.Module] = None, batch: int = 32,
              lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """``steps`` Adam steps on batches of the training images: cross-entropy with labels, or
    distillation from ``teacher`` without."""
    if steps <= 0:
        return model.eval()
    if not data.labelled and teacher is None:
        raise ValueError("fine-tuning without labels needs the starting network to distil from")
    dev = device()
    gen = torch.Generator().manual_seed(seed)
    if teacher is not None:
        teacher.to(dev).eval()
    model.to(dev).train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:  # the models' 0.01 (as TF's 0.99 decay) would keep stale statistics for short runs
        m.momentum = BN_MOMENTUM
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(data.train), (min(batch, len(data.train)),), generator=gen)
        x = data.train[idx].to(dev)
        y = data.train_labels[idx].to(dev) if data.labelled else None
        if torch.rand(1, generator=gen).item() < 0.5:
            x = x.flip(3)
            y = y.flip(-1) if y is not None and y.ndim == 3 else y  # a mask flips with its image
        out = model(x)
        if y is not None:
            loss = F.cross_entropy(out, y)
        else:
            with torch.no_grad():
                want = F.softmax(teacher(x) / TEMPERATURE, 1)
            # KL per image (classes) or per pixel (segmentation), averaged over them
            loss = F.kl_div(F.log_softmax(out / TEMPERATURE, 1), want, reduction="sum") / (out.numel() / out.shape[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    if teacher is not None:
        teacher.cpu()
    return model.cpu().eval()


def accuracy(model: nn.Module, data: Dataset, teacher: Optional[nn.Module] = None) -> float:
    """Top-1 accuracy on the held-out images, or top-1 agreement with ``teacher`` without labels;
    for segmentation, mean IoU over the classes present in either."""
    classes, preds = 0, []
    for t in _scores(model, data.held_out):  # a batch's scores at a time: a mask's are large
        classes = t.shape[1]
        preds.append(t.argmax(1))
    got = torch.cat(preds)
    if data.labelled:
        want = data.held_out_labels
    else:
        want = torch.cat([t.argmax(1) for t in _scores(teacher, data.held_out)])
        teacher.cpu()
    model.cpu()
    if got.ndim == 1:
        return float((got == want).float().mean())
    confusion = torch.bincount((got + classes * want).flatten(), minlength=classes * classes)
    confusion = confusion.reshape(classes, classes).double()
    hit = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - hit
    return float((hit[union > 0] / union[union > 0]).mean())
