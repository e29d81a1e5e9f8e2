"""Shared helpers: snapshots of a model's tensors and modes, and small models."""

from __future__ import annotations

import copy
import os

# ultralytics checks connectivity (DNS lookups) when first imported unless told it is offline: nothing here
# may reach the network (tests/test_libraries.py checks that it does not)
os.environ.setdefault("YOLO_OFFLINE", "1")

import pytest
import torch
from torch import nn
from torch.nn.parameter import is_lazy

import freezable as fz
from freezable.presets import registry


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer, by name (a lazy module's tensor not materialised yet: its class name)."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    return {name: type(t).__name__ if is_lazy(t) else t.detach().clone() for name, t in tensors.items()}


def same_tensor(a: torch.Tensor | str, b: torch.Tensor | str) -> bool:
    """Bit-identical copies (or the same lazy placeholder) from :func:`snapshot`."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return torch.equal(a, b)


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    """Names of the tensors that are no longer bit-identical to ``before``."""
    now = snapshot(model)
    return {name for name, t in before.items() if not same_tensor(t, now[name])}


def modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


class Tensors(dict):
    """Named tensors that compare equal when every tensor is bit-identical."""

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, dict) and self.keys() == other.keys()
                and all(same_tensor(t, other[n]) for n, t in self.items()))


def full_state(model: nn.Module) -> tuple:
    """Everything a failed call must leave alone: freeze state, grad flags, hooks, modes, tensors."""
    state = model.freeze_state() if isinstance(model, fz.Freezable) else None
    return (
        state,
        {n: (p.requires_grad, p.grad is None) for n, p in model.named_parameters()},
        {n: (m.training, list(m._forward_pre_hooks.values())) for n, m in model.named_modules()},
        Tensors(snapshot(model)),
    )


class PlainNet(nn.Module):
    """A small CNN with BatchNorm and dropout in its features."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(8, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Net(fz.Freezable, PlainNet):
    """PlainNet with the mixin: its groups declared in the class."""

    freeze_groups = {"features": "features", "classifier": "classifier"}


def in_place_net(num_classes: int = 3) -> PlainNet:
    """PlainNet made Freezable in place (``fz.freezable``), with Net's groups registered."""
    model = fz.freezable(PlainNet(num_classes))
    model.register_freeze_group("features", "features")
    return model.register_freeze_group("classifier", "classifier")


@pytest.fixture(params=["mixin", "in_place"])
def net(request: pytest.FixtureRequest) -> Net:
    """The behaviour tests of API.md section 1 run over both forms: the mixin class and the in-place model."""
    torch.manual_seed(0)
    return Net() if request.param == "mixin" else in_place_net()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 3, 8, 8)


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


# -- hypothesis profiles: "ci" by default, "long" one flag away ---------------------------------------------------
# pytest --hypothesis-profile=long tests/test_properties.py
try:
    from hypothesis import HealthCheck, Phase, settings
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass
else:
    settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, print_blob=True,
                              phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _preset_registry_restored():
    """Every test leaves the process-wide preset registry as it found it (a docs block or a test registers
    presets of its own), so that tests of the registry's contents do not depend on the order tests run in."""
    saved = [(table, dict(table)) for table in (registry._PRESETS, registry._MADE)]
    yield
    for table, entries in saved:
        table.clear()
        table.update(entries)
