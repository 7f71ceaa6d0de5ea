"""Export any ``torch.nn.Module`` to ONNX, check the file, and compare onnxruntime with PyTorch."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from mobilec.errors import ConfigError

EXPORTERS = ("torchscript", "dynamo")


@dataclass(frozen=True)
class ExportConfig:
    input_size: int = 224
    batch: int = 1
    opset: int = 17
    exporter: str = "torchscript"  # torch.onnx.export(dynamo=False); "dynamo" uses torch.export
    input_name: str = "input"
    output_name: str = "output"
    seed: int = 0

    def __post_init__(self):
        if self.exporter not in EXPORTERS:
            raise ConfigError(f"unknown exporter {self.exporter!r}; valid: {', '.join(EXPORTERS)}")
        if self.input_size < 32 or self.batch < 1:
            raise ConfigError(f"input size {self.input_size} / batch {self.batch}: need size >= 32, batch >= 1")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    max_abs_error: float  # onnxruntime vs PyTorch on a seeded random input
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def export_onnx(model: nn.Module, path: str | Path, config: Optional[ExportConfig] = None) -> ExportResult:
    """Export ``model`` in eval mode, run ``onnx.checker`` (full check) and compare onnxruntime's
    output with PyTorch's on the same seeded input."""
    import onnx
    import onnxruntime as ort

    cfg = config or ExportConfig()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = torch.from_numpy(
        np.random.default_rng(cfg.seed).standard_normal((cfg.batch, 3, cfg.input_size, cfg.input_size),
                                                         dtype=np.float32))
    with torch.no_grad():
        expected = model(x).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation chatter
        torch.onnx.export(model, (x,), str(path), dynamo=cfg.exporter == "dynamo", opset_version=cfg.opset,
                          input_names=[cfg.input_name], output_names=[cfg.output_name],
                          external_data=False, **({"verbose": False} if cfg.exporter == "dynamo" else {}))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return ExportResult(path, opset, float(np.abs(got - expected).max()), tuple(x.shape), tuple(expected.shape))
