"""The model registry: one row per name, with the paper's figures where the paper gives them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from mobilec.errors import UserError
from mobilec.files import write_atomic
from mobilec.frontends.lraspp import LRASPP
from mobilec.frontends.mobilenetv3 import MobileNetV3, MobileNetV3Config, Plan


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    input_size: int = 224
    paper_madds_m: Optional[float] = None   # Table 3 of the paper, millions
    paper_params_m: Optional[float] = None  # Table 3 of the paper, millions
    task: str = "classification"
    torchvision: Optional[str] = None        # torchvision builder whose state_dict keys we map
    file: Optional[Path] = None              # a network file (``save_network``): weights are in our own keys
    base: Optional[str] = None               # a network file's registered model


def _v3(arch: str, width: float = 1.0, minimal: bool = False) -> nn.Module:
    return MobileNetV3(MobileNetV3Config(arch, width=width, minimal=minimal))


def _lraspp(arch: str) -> nn.Module:
    # dilated last stage (output stride 16) as in the paper; full-width tail as torchvision's
    # lraspp_mobilenet_v3_large, so its weights load.
    return LRASPP(MobileNetV3Config(arch, dilated=True))


_SPECS = [
    ModelSpec("mobilenet_v3_large", partial(_v3, "large"), paper_madds_m=219, paper_params_m=5.4,
              torchvision="mobilenet_v3_large"),
    ModelSpec("mobilenet_v3_large_125", partial(_v3, "large", 1.25)),
    ModelSpec("mobilenet_v3_large_075", partial(_v3, "large", 0.75), paper_madds_m=155, paper_params_m=4.0),
    ModelSpec("mobilenet_v3_large_050", partial(_v3, "large", 0.5)),
    ModelSpec("mobilenet_v3_large_035", partial(_v3, "large", 0.35)),
    ModelSpec("mobilenet_v3_large_minimal", partial(_v3, "large", minimal=True)),
    ModelSpec("mobilenet_v3_small", partial(_v3, "small"), paper_madds_m=56, paper_params_m=2.5,
              torchvision="mobilenet_v3_small"),
    ModelSpec("mobilenet_v3_small_125", partial(_v3, "small", 1.25)),
    ModelSpec("mobilenet_v3_small_075", partial(_v3, "small", 0.75), paper_madds_m=44, paper_params_m=2.0),
    ModelSpec("mobilenet_v3_small_050", partial(_v3, "small", 0.5)),
    ModelSpec("mobilenet_v3_small_035", partial(_v3, "small", 0.35)),
    ModelSpec("mobilenet_v3_small_minimal", partial(_v3, "small", minimal=True)),
    ModelSpec("lraspp_mobilenet_v3_large", partial(_lraspp, "large"), input_size=512, task="segmentation",
              torchvision="lraspp_mobilenet_v3_large"),
    ModelSpec("lraspp_mobilenet_v3_small", partial(_lraspp, "small"), input_size=512, task="segmentation"),
]

MODELS: dict[str, ModelSpec] = {s.name: s for s in _SPECS}
DEFAULT_MODEL = "mobilenet_v3_large"


class UnknownModelError(UserError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


NETWORK_FORMAT = "mobilec-network"


def get_spec(name: str) -> ModelSpec:
    """A registered model by name, or a network file (``*.json``, written by ``save_network``)."""
    if name.endswith(".json"):
        return load_network(name)
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {', '.join(MODELS)}, or a network file (*.json) "
            f"written by `mobilec adapt`") from None


def save_network(path, plan: Plan, base: str, input_size: int) -> Path:
    """Write ``plan`` (a MobileNetV3 with explicit widths, derived from the registered ``base``) as a
    network file: the registry builds it by its path, like a name (``get_spec``)."""
    get_spec(base)  # a known base
    path = Path(path)
    doc = {"format": NETWORK_FORMAT, "version": 1, "base": base, "input_size": input_size, "plan": plan.to_dict()}
    return write_atomic(path, json.dumps(doc, indent=1) + "\n")


def load_network(path) -> ModelSpec:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UnknownModelError(f"{path}: no such network file") from None
    except (OSError, ValueError) as e:
        raise UnknownModelError(f"{path}: not a network file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != NETWORK_FORMAT:
        raise UnknownModelError(f"{path}: not a network file (no \"format\": \"{NETWORK_FORMAT}\"); "
                                f"`mobilec adapt` writes them")
    try:
        base = MODELS[doc["base"]]
        plan = Plan.from_dict(doc["plan"])
        input_size = int(doc["input_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise UnknownModelError(f"{path}: a damaged network file ({type(e).__name__}: {e})") from None
    return ModelSpec(path.stem, partial(network_model, base.name, plan), input_size, task=base.task, file=path,
                     base=base.name)


def network_model(base: str, plan: Plan) -> nn.Module:
    """The network of ``plan``, a registered model ``base`` with its widths changed: a MobileNetV3,
    or LR-ASPP on one for a segmentation plan."""
    arch = "large" if "large" in base else "small"
    if plan.task == "segmentation":
        return LRASPP(MobileNetV3Config(arch, dilated=True), plan=plan)
    return MobileNetV3(MobileNetV3Config(arch), plan)


def calibrate_batch_norm(model: nn.Module, input_size: int, batch: int = 4, seed: int = 0) -> nn.Module:
    """Set batch-norm statistics from one random batch, so a randomly initialised network keeps
    unit-scale activations instead of vanishing to ~1e-9 at the logits (which would make every
    numerical comparison trivially pass)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.randn(batch, 3, input_size, input_size, generator=gen))
    return model.eval()


def create_model(name: str, weights: Optional[str] = None, seed: int = 0) -> nn.Module:
    """Build a registered model in eval mode: from a torchvision state_dict, or randomly
    initialised (seeded) with batch-norm statistics calibrated on random data."""
    spec = get_spec(name)
    torch.manual_seed(seed)
    model = spec.build()
    if weights is not None and spec.file is not None:
        from mobilec.frontends.weights import load_own_weights

        load_own_weights(model, weights)
        return model.eval()
    if weights is not None:
        from mobilec.frontends.weights import load_torchvision_weights

        load_torchvision_weights(model, weights)
        return model.eval()
    return calibrate_batch_norm(model, min(spec.input_size, 224), seed=seed)
