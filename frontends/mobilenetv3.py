"""MobileNetV3-Large and -Small as the paper's Tables 1 and 2 read ("Searching for MobileNetV3",
Howard et al., 2019), one bottleneck ("bneck") per table row.

Module names follow our own scheme (``stem``, ``blocks.N.expand`` ...); ``weights.py`` maps the
keys of torchvision state_dicts onto it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%.

    The one place width multipliers are rounded (as in the reference TF implementation)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class Bneck:
    """One row of Table 1/2: ``kernel, expansion, out, SE, NL, stride``."""

    kernel: int
    exp: int
    out: int
    se: bool
    nl: str  # "RE" (ReLU) or "HS" (h-swish)
    stride: int


#            kernel exp  out   SE     NL    stride      input (Table 1)
LARGE = (
    Bneck(3, 16, 16, False, "RE", 1),   # 112x112x16
    Bneck(3, 64, 24, False, "RE", 2),   # 112x112x16
    Bneck(3, 72, 24, False, "RE", 1),   # 56x56x24
    Bneck(5, 72, 40, True, "RE", 2),    # 56x56x24
    Bneck(5, 120, 40, True, "RE", 1),   # 28x28x40
    Bneck(5, 120, 40, True, "RE", 1),   # 28x28x40
    Bneck(3, 240, 80, False, "HS", 2),  # 28x28x40
    Bneck(3, 200, 80, False, "HS", 1),  # 14x14x80
    Bneck(3, 184, 80, False, "HS", 1),  # 14x14x80
    Bneck(3, 184, 80, False, "HS", 1),  # 14x14x80
    Bneck(3, 480, 112, True, "HS", 1),  # 14x14x80
    Bneck(3, 672, 112, True, "HS", 1),  # 14x14x112
    Bneck(5, 672, 160, True, "HS", 2),  # 14x14x112
    Bneck(5, 960, 160, True, "HS", 1),  # 7x7x160
    Bneck(5, 960, 160, True, "HS", 1),  # 7x7x160
)

#            kernel exp  out   SE     NL    stride      input (Table 2)
SMALL = (
    Bneck(3, 16, 16, True, "RE", 2),    # 112x112x16
    Bneck(3, 72, 24, False, "RE", 2),   # 56x56x16
    Bneck(3, 88, 24, False, "RE", 1),   # 28x28x24
    Bneck(5, 96, 40, True, "HS", 2),    # 28x28x24
    Bneck(5, 240, 40, True, "HS", 1),   # 14x14x40
    Bneck(5, 240, 40, True, "HS", 1),   # 14x14x40
    Bneck(5, 120, 48, True, "HS", 1),   # 14x14x40
    Bneck(5, 144, 48, True, "HS", 1),   # 14x14x48
    Bneck(5, 288, 96, True, "HS", 2),   # 14x14x48
    Bneck(5, 576, 96, True, "HS", 1),   # 7x7x96
    Bneck(5, 576, 96, True, "HS", 1),   # 7x7x96
)


@dataclass(frozen=True)
class MobileNetV3Config:
    """Everything that shapes a MobileNetV3: the table, the head widths and the variant switches."""

    arch: str  # "large" or "small"
    width: float = 1.0
    minimal: bool = False      # paper sec. 6.1.1: no SE, ReLU instead of h-swish, 3x3 kernels only
    dilated: bool = False      # segmentation: last stage keeps output stride 16 with dilation 2
    reduced_tail: bool = False  # segmentation: halve the channels of the last stage (paper sec. 6.3)
    num_classes: int = 1000
    dropout: float = 0.2

    @property
    def rows(self) -> tuple[Bneck, ...]:
        rows = LARGE if self.arch == "large" else SMALL
        if self.minimal:
            rows = tuple(replace(r, kernel=3, se=False, nl="RE") for r in rows)
        if self.reduced_tail:
            tail = 3  # the last three rows form the 1/32 stage in both tables
            rows = rows[:-tail] + tuple(
                replace(r, exp=r.exp // 2, out=r.out // 2) for r in rows[-tail:]
            )
        return rows

    @property
    def last_conv(self) -> int:
        """Channels of the final 1x1 conv: 6x the last bneck's output (960 and 576 in the tables)."""
        return 6 * self.rows[-1].out

    @property
    def head(self) -> int:
        """The 1x1 NBN conv after pooling: 1280 (Large) / 1024 (Small), widened above width 1.0."""
        base = 1280 if self.arch == "large" else 1024
        return make_divisible(base * max(1.0, self.width))

    @property
    def nl_stem(self) -> str:
        return "RE" if self.minimal else "HS"

    def channels(self, c: int) -> int:
        return make_divisible(c * self.width)

    def plan(self) -> "Plan":
        """Every layer's width, resolved from the table, the width multiplier and the switches."""
        cin, table_in, blocks = self.channels(16), 16, []
        for i, row in enumerate(self.rows):
            dilation = 2 if self.dilated and i >= len(self.rows) - 3 else 1
            # The expansion is a ratio of the (rounded) input width, as in the reference TF code the
            # paper's figures come from; at width 1.0 it is exactly the table's "exp" column.
            exp, out = make_divisible(cin * row.exp / table_in), self.channels(row.out)
            conv_stride = 1 if dilation > 1 else row.stride
            blocks.append(Block(row.kernel, exp, out, make_divisible(exp // 4) if row.se else 0, row.nl, row.stride,
                                dilation, residual=conv_stride == 1 and cin == out, expand=exp != cin))
            cin, table_in = out, row.out
        return Plan(self.channels(16), tuple(blocks), self.channels(self.last_conv), self.head, self.num_classes,
                    self.nl_stem, self.dropout)


@dataclass(frozen=True)
class Block:
    """One bottleneck with its widths resolved: what the layers are built from."""

    kernel: int
    exp: int
    out: int
    se: int  # the squeeze width of its SE block; 0: no SE
    nl: str
    stride: int  # the table's stride; a dilated block convolves with stride 1
    dilation: int = 1
    residual: bool = False
    expand: bool = True  # False: no expansion conv; the depthwise runs on the input (exp == input width)

    @property
    def conv_stride(self) -> int:
        return 1 if self.dilation > 1 else self.stride


@dataclass(frozen=True)
class Plan:
    """A MobileNetV3 with every width explicit: the stem, the blocks, the last conv and the head.
    ``MobileNetV3Config.plan`` gives the paper's; NetAdapt (``mobilec.adapt``) changes widths here.
    ``task`` "segmentation": the LR-ASPP head on this backbone (``mobilec.frontends.lraspp``),
    ``head`` its inner width (the paper's 128)."""

    stem: int
    blocks: tuple[Block, ...]
    last: int
    head: int
    num_classes: int = 1000
    nl_stem: str = "HS"
    dropout: float = 0.2
    task: str = "classification"

    def inputs(self) -> list[int]:
        """Each block's input width."""
        return [self.stem] + [b.out for b in self.blocks[:-1]]

    def low_tap(self) -> int:
        """The first block whose output is at 1/8 of the input: LR-ASPP's low-level features."""
        strides = 2
        for i, b in enumerate(self.blocks):
            strides *= b.stride
            if strides == 8:
                return i
        raise ValueError("no block at 1/8 of the input")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blocks"] = [asdict(b) for b in self.blocks]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(**{**d, "blocks": tuple(Block(**b) for b in d["blocks"])})


def activation(nl: str) -> nn.Module:
    return nn.Hardswish() if nl == "HS" else nn.ReLU()


class ConvBNAct(nn.Sequential):
    def __init__(self, cin, cout, kernel=1, stride=1, groups=1, dilation=1, nl: Optional[str] = "RE"):
        padding = (kernel - 1) // 2 * dilation
        layers = [
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=0.001, momentum=0.01),
        ]
        if nl is not None:
            layers.append(activation(nl))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite, reduced to 1/4 of the expansion width (paper sec. 5.3), h-sigmoid gate."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.relu(self.reduce(s))
        s = F.hardsigmoid(self.expand(s))
        return x * s


class Bottleneck(nn.Module):
    def __init__(self, cin: int, b: Block):
        super().__init__()
        exp = b.exp if b.expand else cin
        self.residual = b.residual
        # No expansion conv where the expansion equals the input (Large's first row).
        self.expand = ConvBNAct(cin, exp, nl=b.nl) if b.expand else None
        self.depthwise = ConvBNAct(exp, exp, b.kernel, b.conv_stride, groups=exp, dilation=b.dilation, nl=b.nl)
        self.se = SqueezeExcite(exp, b.se) if b.se else None
        self.project = ConvBNAct(exp, b.out, nl=None)
        self.out_channels = b.out
        self.stride = b.stride

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    def __init__(self, cfg: MobileNetV3Config, plan: Optional[Plan] = None):
        super().__init__()
        self.config = cfg
        self.plan = plan = plan or cfg.plan()
        self.stem = ConvBNAct(3, plan.stem, 3, 2, nl=plan.nl_stem)
        self.blocks = nn.ModuleList(Bottleneck(cin, b) for cin, b in zip(plan.inputs(), plan.blocks))
        self.last_conv = ConvBNAct(plan.blocks[-1].out, plan.last, nl=plan.nl_stem)
        self.out_channels = plan.last
        # The paper's "conv2d 1x1, NBN" layers after pooling, written as Linear like torchvision
        # (identical maths on a 1x1 map; Gemm in ONNX).
        self.classifier = nn.Sequential(
            nn.Linear(plan.last, plan.head),
            activation(plan.nl_stem),
            nn.Dropout(plan.dropout),
            nn.Linear(plan.head, plan.num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def features(self, x, taps: tuple[int, ...] = ()):
        """Run stem, blocks and last conv; also return the outputs of the block indices in ``taps``."""
        x = self.stem(x)
        tapped = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in taps:
                tapped[i] = x
        return self.last_conv(x), tapped

    def forward(self, x):
        x, _ = self.features(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)
