"""Fine-tuning and scoring for NetAdapt, on PyTorch's CPU (or a GPU when there is one).

With labels the loss is cross-entropy and accuracy is top-1 on the held-out images. Without,
the network learns the starting network's outputs (distillation: KL divergence at temperature
``TEMPERATURE``), and "accuracy" is top-1 agreement with the starting network on the held-out images.
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


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    dev = device()
    model.to(dev).eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + EVAL_BATCH].to(dev)).cpu() for i in range(0, len(x), EVAL_BATCH)])


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
    targets = data.train_labels if data.labelled else F.softmax(_logits(teacher, data.train) / TEMPERATURE, 1)
    model.to(dev).train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:  # the models' 0.01 (as TF's 0.99 decay) would keep stale statistics for short runs
        m.momentum = BN_MOMENTUM
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(data.train), (min(batch, len(data.train)),), generator=gen)
        x = data.train[idx].to(dev)
        if torch.rand(1, generator=gen).item() < 0.5:
            x = x.flip(3)
        out = model(x)
        if data.labelled:
            loss = F.cross_entropy(out, targets[idx].to(dev))
        else:
            loss = F.kl_div(F.log_softmax(out / TEMPERATURE, 1), targets[idx].to(dev), reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.cpu().eval()


def accuracy(model: nn.Module, data: Dataset, teacher: Optional[nn.Module] = None) -> float:
    """Top-1 accuracy on the held-out images, or top-1 agreement with ``teacher`` without labels."""
    got = _logits(model, data.held_out).argmax(1)
    want = data.held_out_labels if data.labelled else _logits(teacher, data.held_out).argmax(1)
    model.cpu()
    return float((got == want).float().mean())
