"""Helpers shared by the ported peer tests (tests/peers/): the peers' own checks, in freezable's terms."""

from __future__ import annotations

import timm
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import freezable as fz
from freezable.detect import detect_groups

FINAL_NORM_PENDING = "issue 16 final norms: a final norm goes with the last stage (detection helper)"
HRNET_TRANSITIONS_PENDING = "issue 16 HRNet transitions: timm.hrnet.backbone groups transition{i} with stage i (detection helper)"
DETECTION_PENDING = "issue 11 detection: torchvision.detection.trainable_backbone_layers_N presets"


def check_norm_state(modules, train_state: bool) -> bool:
    """mmdetection/mmpretrain/mmpose ``check_norm_state``: every ``_BatchNorm`` is in ``train_state``."""
    return all(mod.training == train_state for mod in modules if isinstance(mod, _BatchNorm))


def assert_frozen(module: nn.Module) -> None:
    """The mm* frozen-stage assertion: every BatchNorm in eval, every parameter without grad."""
    for mod in module.modules():
        if isinstance(mod, _BatchNorm):
            assert mod.training is False
    for param in module.parameters():
        assert param.requires_grad is False


def build(source: str, name: str, **kwargs) -> nn.Module:
    """A randomly initialised model on the meta device (no weights, no memory): modes and grad flags only."""
    with torch.device("meta"):
        if source == "timm":
            return timm.create_model(name, pretrained=False, **kwargs)
        return torchvision.models.get_model(name, weights=None, **kwargs)


def backbone_parameters(fb: fz.FrozenBackbone) -> dict[str, nn.Parameter]:
    """The wrapped model's parameters outside its ``head`` group (what an mm* backbone holds)."""
    head = {n for n, _ in fb.backbone.named_parameters() if _in_head(fb, n)}
    return {n: p for n, p in fb.backbone.named_parameters() if n not in head}


def _in_head(fb: fz.FrozenBackbone, name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in detect_groups(fb.backbone)["head"])
