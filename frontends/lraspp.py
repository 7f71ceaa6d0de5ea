"""The LR-ASPP segmentation head (paper sec. 6.3, Figure 10) on a MobileNetV3 backbone.

The 1/16 features go through 1x1 conv + BN + ReLU and are gated by a large-kernel average pool
+ 1x1 conv + sigmoid; the result is upsampled bilinearly to 1/8, classified, and summed with a
classifier on the 1/8 features; the sum is upsampled to the input size.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from mobilec.frontends.mobilenetv3 import MobileNetV3, MobileNetV3Config, Plan


class LRASPPHead(nn.Module):
    """The head alone: the last conv's output (``high``, 1/16) and the 1/8 features (``low``) to
    class scores at ``size``."""

    def __init__(self, high_channels: int, low_channels: int, inter_channels: int, num_classes: int,
                 pool_kernel: int = 49, pool_stride: tuple[int, int] = (16, 20)):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Conv2d(high_channels, inter_channels, 1, bias=False)
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)
        self.pool_kernel, self.pool_stride = pool_kernel, pool_stride

    def gate(self, high: torch.Tensor) -> torch.Tensor:
        """Average pool with the paper's 49x49 kernel, stride (16, 20), clipped to the feature map
        (so at 512x512 and below it is a global pool), 1x1 conv, sigmoid, back to the map size."""
        h, w = high.shape[-2:]
        kernel = (min(self.pool_kernel, h), min(self.pool_kernel, w))
        pooled = F.avg_pool2d(high, kernel, self.pool_stride)
        g = torch.sigmoid(self.scale(pooled))
        if g.shape[-2:] != (1, 1):
            g = F.interpolate(g, size=(h, w), mode="bilinear", align_corners=False)
        return g

    def decode(self, high: torch.Tensor, low: torch.Tensor, size) -> torch.Tensor:
        y = self.cbr(high) * self.gate(high)
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.low_classifier(low) + self.high_classifier(y)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class LRASPP(LRASPPHead):
    """LR-ASPP on a MobileNetV3 backbone; ``plan`` (task "segmentation") sets every width."""

    def __init__(self, backbone_cfg: MobileNetV3Config, num_classes: int = 21, inter_channels: int = 128,
                 pool_kernel: int = 49, pool_stride: tuple[int, int] = (16, 20), plan: Optional[Plan] = None):
        plan = plan or replace(backbone_cfg.plan(), head=inter_channels, num_classes=num_classes, task="segmentation")
        # the backbone first, as before plans existed (the same random initialisation for a seed)
        backbone = MobileNetV3(backbone_cfg, replace(plan, head=backbone_cfg.head, num_classes=backbone_cfg.num_classes,
                                                     task="classification"))
        self.low_index = plan.low_tap()
        super().__init__(plan.last, plan.blocks[self.low_index].out, plan.head, plan.num_classes, pool_kernel,
                         pool_stride)
        self.plan = plan
        self.backbone = backbone
        self.backbone.classifier = None  # the segmentation model has no ImageNet head

    def forward(self, x):
        high, taps = self.backbone.features(x, taps=(self.low_index,))
        return self.decode(high, taps[self.low_index], x.shape[-2:])
