"""Parameter and multiply-add counts, measured by running the model once with hooks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelStats:
    params: int
    madds: int


def count(model: nn.Module, input_size: int, batch: int = 1) -> ModelStats:
    """Multiply-adds of convolutions and fully connected layers, as the paper counts them
    (elementwise work such as activations, SE scaling and BN is not counted)."""
    madds = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal madds
        kh, kw = m.kernel_size
        madds += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal madds
        madds += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(batch, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return ModelStats(params=params, madds=madds // batch)
