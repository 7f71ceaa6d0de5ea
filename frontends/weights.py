"""Load state_dicts saved from torchvision's MobileNetV3 / LR-ASPP models into ours.

torchvision numbers its layers (``features.4.block.2.fc1.weight``); we name them
(``blocks.3.se.reduce.weight``). The key map is derived from our model's structure, so it
covers every width and variant that has the same layer sequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from mobilec.errors import UserError
from mobilec.frontends.lraspp import LRASPP
from mobilec.frontends.mobilenetv3 import MobileNetV3


class WeightsError(UserError, ValueError):
    pass


def _backbone_map(net: MobileNetV3, tv_prefix: str, our_prefix: str) -> dict[str, str]:
    """torchvision key prefix -> our key prefix, for the stem, every block and the last conv."""
    m = {f"{tv_prefix}0.": f"{our_prefix}stem."}
    for i, block in enumerate(net.blocks):
        parts = [n for n in ("expand", "depthwise", "se", "project") if getattr(block, n) is not None]
        for j, name in enumerate(parts):
            m[f"{tv_prefix}{i + 1}.block.{j}."] = f"{our_prefix}blocks.{i}.{name}."
    m[f"{tv_prefix}{len(net.blocks) + 1}."] = f"{our_prefix}last_conv."
    return m


_SE_RENAMES = ((".se.fc1.", ".se.reduce."), (".se.fc2.", ".se.expand."))


def torchvision_key_map(model: nn.Module) -> dict[str, str]:
    """Prefix map from torchvision's layout to ours, for a MobileNetV3 or an LRASPP."""
    if isinstance(model, LRASPP):
        m = _backbone_map(model.backbone, "backbone.", "backbone.")
        m.update({
            "classifier.cbr.": "cbr.",
            "classifier.scale.1.": "scale.",  # Sequential(AdaptiveAvgPool2d, Conv2d, Sigmoid)
            "classifier.low_classifier.": "low_classifier.",
            "classifier.high_classifier.": "high_classifier.",
        })
        return m
    if isinstance(model, MobileNetV3):
        m = _backbone_map(model, "features.", "")
        m["classifier."] = "classifier."
        return m
    raise WeightsError(f"no torchvision key map for {type(model).__name__}")


def translate(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    prefixes = sorted(torchvision_key_map(model).items(), key=lambda kv: -len(kv[0]))
    out, unknown = {}, []
    for key, value in state.items():
        for tv, ours in prefixes:
            if key.startswith(tv):
                new = ours + key[len(tv):]
                for a, b in _SE_RENAMES:
                    new = new.replace(a, b)
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"{len(unknown)} keys are not in torchvision's layout for this model, "
                           f"e.g. {unknown[:3]}")
    return out


def _state_dict(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    except Exception as e:  # torch raises several unrelated types for a corrupt file
        raise WeightsError(f"{path}: not a torch state_dict ({e.__class__.__name__}: {e})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, expected a state_dict")
    return state


def load_torchvision_weights(model: nn.Module, path: str | Path) -> None:
    path = Path(path)
    _load_checked(model, translate(_state_dict(path), model), path)


def load_own_weights(model: nn.Module, path: str | Path) -> None:
    """A state_dict in our own keys (``mobilec adapt`` writes them), for the network it was saved from."""
    path = Path(path)
    _load_checked(model, _state_dict(path), path)


def _load_checked(model: nn.Module, ours: dict, path: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(ours))
    if missing:
        raise WeightsError(f"{path}: {len(missing)} weights missing for this model, e.g. {missing[:3]}; "
                           f"was it saved from the matching torchvision model?")
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in ours.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise WeightsError(f"{path}: shape mismatch in {len(bad)} weights, e.g. {bad[:3]}; "
                           f"wrong model or width multiplier?")
    model.load_state_dict(ours, strict=True)
