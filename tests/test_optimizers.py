"""B1 across every optimizer in torch.optim: frozen tensors stay bit-identical when freezing mid-training.

The optimizers are enumerated from ``torch.optim`` itself, so one added to torch is tested
without anyone adding it here. Each is run with every implementation it has (the default,
``foreach=True``, ``foreach=False``, ``fused=True`` where the CPU build supports it), with and
without weight decay and momentum where it takes them, and with ``zero_grad(set_to_none=False)``
as well as ``True``. The optimizer is built over *all* parameters and trained for two steps
(so momentum and ``exp_avg`` exist) before the features are frozen; three more steps must
leave every frozen parameter and buffer bit-identical and move the head.
``tests/test_mixin.py`` keeps a smaller matrix on a CNN.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import pytest
import torch
from conftest import changed, snapshot
from torch import nn

import freezable as fz


def all_optimizers() -> list[type[torch.optim.Optimizer]]:
    """Every optimizer class that torch.optim exports."""
    return sorted(
        {obj for name in dir(torch.optim) if isinstance(obj := getattr(torch.optim, name), type)
         and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer},
        key=lambda cls: cls.__name__,
    )


class Tiny(fz.Freezable, nn.Module):
    """Linear, BatchNorm1d and Dropout in the features; a linear head."""

    freeze_groups = {"features": "features", "head": "head"}

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Linear(4, 6, bias=bias), nn.BatchNorm1d(6, affine=bias), nn.ReLU(),
                                      nn.Dropout(0.3))
        self.head = nn.Linear(6, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @staticmethod
    def batch() -> torch.Tensor:
        return torch.randn(8, 4)


class Sparse(fz.Freezable, nn.Module):
    """Two sparse embeddings, for SparseAdam (which takes sparse gradients only)."""

    freeze_groups = {"features": "features", "head": "head"}

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Embedding(10, 4, sparse=True)
        self.head = nn.Embedding(10, 4, sparse=True)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.features(idx) * self.head(idx)

    @staticmethod
    def batch() -> torch.Tensor:
        return torch.randint(0, 10, (8,))


def make_model(cls: type[torch.optim.Optimizer]) -> nn.Module:
    if cls is torch.optim.SparseAdam:
        return Sparse()
    if cls.__name__ == "Muon":  # Muon takes 2-D parameters only
        return Tiny(bias=False)
    return Tiny()


def _parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def _fused_runs_on_cpu(cls: type[torch.optim.Optimizer]) -> bool:
    try:
        p = nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
        cls([p], fused=True).step()
    except (RuntimeError, ValueError, NotImplementedError):
        return False
    return True


def implementations(cls: type[torch.optim.Optimizer]) -> list[tuple[str, dict[str, Any]]]:
    """(id, kwargs) for every implementation of ``cls`` that runs here."""
    names = _parameters(cls)
    found: list[tuple[str, dict[str, Any]]] = [("default", {})]
    if "foreach" in names:
        found += [("foreach", {"foreach": True}), ("for-loop", {"foreach": False})]
    if "fused" in names and _fused_runs_on_cpu(cls):
        found.append(("fused", {"fused": True}))
    return found


SETTINGS = {"SGD": {"lr": 0.1}, "ASGD": {"lr": 0.1}, "Adadelta": {"lr": 1.0}, "Rprop": {"lr": 0.01},
            "Muon": {"lr": 0.05}, "LBFGS": {"lr": 0.5, "max_iter": 3, "history_size": 4}}


def cases() -> list[Any]:
    params = []
    for cls in all_optimizers():
        names = _parameters(cls)
        decays = [0.0, 0.1] if "weight_decay" in names else [0.0]
        momenta = [0.0, 0.9] if "momentum" in names else [None]
        for (impl, kwargs), decay, momentum, set_to_none in itertools.product(
                implementations(cls), decays, momenta, [True, False]):
            kw = {**SETTINGS.get(cls.__name__, {"lr": 0.05}), **kwargs}
            if "weight_decay" in names:
                kw["weight_decay"] = decay
            if momentum is not None:
                kw["momentum"] = momentum
            parts = [cls.__name__, impl] + (["wd"] if decay else []) + (["momentum"] if momentum else []) + (
                ["set_to_none"] if set_to_none else ["zero_grads"])
            params.append(pytest.param(cls, kw, set_to_none, id="-".join(parts)))
    return params


CASES = cases()


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, set_to_none: bool) -> None:
    model.train()
    x = model.batch()

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=set_to_none)
        loss = model(x).square().mean()
        loss.backward()
        return loss

    for _ in range(steps):
        if isinstance(opt, torch.optim.LBFGS):
            opt.step(closure)
        else:
            closure()
            opt.step()


def test_the_matrix_covers_every_torch_optimizer():
    covered = {case.values[0] for case in CASES}
    assert covered == set(all_optimizers()) and len(covered) >= 14
    assert len(CASES) >= 150


@pytest.mark.parametrize("cls, kwargs, set_to_none", CASES)
def test_frozen_tensors_stay_bit_identical_mid_training(cls, kwargs, set_to_none):
    model = make_model(cls)
    opt = cls(model.parameters(), **kwargs)  # over every parameter, before freezing
    train(model, opt, 2, set_to_none)
    assert opt.state or (cls is torch.optim.SGD and not kwargs["momentum"]), "the first steps build state"
    model.freeze("features")
    if isinstance(opt, torch.optim.LBFGS):  # its curvature history spans the frozen parameters: fz.check says
        assert any("build a new LBFGS after freezing" in p for p in fz.check(model, opt).problems)
        opt = cls(model.parameters(), **kwargs)  # frozen parameters may stay in it
    before = snapshot(model)
    train(model, opt, 3, set_to_none)
    moved = changed(before, model)
    assert not {name for name in moved if name.startswith("features.")}
    assert any(name.startswith("head.") for name in moved)


def test_lbfgs_without_history_over_frozen_parameters_is_fine():
    model = Tiny().freeze("features")
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
    before = snapshot(model.features)
    train(model, opt, 3, set_to_none=False)
    assert not changed(before, model.features) and fz.check(model.eval(), opt).ok

