"""A registry model quantised by PyTorch's own tooling, written by PyTorch's ONNX exporter.

The file a PyTorch user brings: FX graph-mode static quantisation (``prepare_fx`` /
``convert_fx``, no change to the model's code) calibrated on seeded random inputs, exported by the
TorchScript exporter (the one that writes quantised modules as QDQ ONNX). Its form differs from
``mobilec quantize``'s (onnxruntime's tools): scales and zero points are Constant nodes, each
QuantizeLinear is followed by a Cast, biases are int32 DequantizeLinears whose zero point is
computed, and the squeeze-and-excite FCs, h-swish and h-sigmoid are quantised too. Used by the
tests and ``benchmarks/int8.py --quantizer pytorch`` to check mobilec against a second quantiser.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Union

PYTORCH_BACKENDS = ("x86", "qnnpack", "fbgemm")  # x86, fbgemm: per-channel weights; qnnpack: per-tensor


def export_pytorch_int8(name: str, path: Union[str, Path], input_size: Optional[int] = None, calibration: int = 4,
                        backend: str = "x86", seed: int = 0) -> Path:
    """Write registry model ``name`` quantised by PyTorch (``backend``'s default qconfig) to ``path``,
    input ``input`` of 1x3xSxS (the model's own size unless ``input_size``), output ``output``."""
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from mobilec.errors import ConfigError
    from mobilec.frontends.registry import calibrate_batch_norm, get_spec

    if backend not in PYTORCH_BACKENDS:
        raise ConfigError(f"unknown PyTorch quantisation backend {backend!r}; valid: {', '.join(PYTORCH_BACKENDS)}")
    spec = get_spec(name)
    size = input_size or spec.input_size
    gen = torch.Generator().manual_seed(seed)
    shape = (1, 3, size, size)
    with warnings.catch_warnings():  # torch.ao.quantization and the TorchScript exporter are deprecated
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        net = calibrate_batch_norm(spec.build(), size, seed=seed)
        prepared = prepare_fx(net, get_default_qconfig_mapping(backend), (torch.randn(shape, generator=gen),))
        with torch.no_grad():
            for _ in range(calibration):
                prepared(torch.randn(shape, generator=gen))
        torch.onnx.export(convert_fx(prepared), (torch.randn(shape, generator=gen),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"])
    return Path(path)
