"""The model registry: one row per name, with the paper's figures where the paper gives them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

from torch import nn

from mobilec.frontends.lraspp import LRASPP
from mobilec.frontends.mobilenetv3 import MobileNetV3, MobileNetV3Config


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    input_size: int = 224
    paper_madds_m: Optional[float] = None   # Table 3 of the paper, millions
    paper_params_m: Optional[float] = None  # Table 3 of the paper, millions
    task: str = "classification"
    torchvision: Optional[str] = None        # torchvision builder whose state_dict keys we map


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


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {', '.join(MODELS)}") from None


def create_model(name: str, weights: Optional[str] = None) -> nn.Module:
    """Build a registered model in eval mode, randomly initialised or from a torchvision state_dict."""
    spec = get_spec(name)
    model = spec.build()
    if weights is not None:
        from mobilec.frontends.weights import load_torchvision_weights

        load_torchvision_weights(model, weights)
    return model.eval()
