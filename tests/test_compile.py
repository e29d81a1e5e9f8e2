"""torch.compile: freezing and unfreezing a compiled model gives eager mode's gradients."""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch
from torch import nn

import freezable as fz


class PlainNet(nn.Module):
    def __init__(self, p_drop: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(p_drop), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).relu())


class Net(fz.Freezable, PlainNet):
    freeze_groups = {"body": "body", "head": "head"}


def in_place_net(p_drop: float) -> PlainNet:
    """PlainNet made Freezable in place, with Net's groups."""
    return fz.freezable(PlainNet(p_drop)).register_freeze_group("body", "body").register_freeze_group("head", "head")


FORMS = {"mixin": Net, "in_place": in_place_net}


def _has_cxx() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++", "c++"))


# aot_eager traces exactly what eager runs (bit-identical); inductor generates C++ kernels (equal to
# float rounding; its dropout RNG differs from eager's, so that model has no dropout).
BACKENDS = [
    pytest.param("aot_eager", 0.3, {"rtol": 0, "atol": 0}, id="aot_eager"),
    pytest.param("inductor", 0.0, {}, id="inductor", marks=[
        pytest.mark.slow, pytest.mark.skipif(not _has_cxx(), reason="inductor needs a C++ compiler")]),
]

STEPS = [  # each a change of freeze state applied to the compiled model (it forwards to the Freezable)
    ("freeze body", lambda m: m.freeze("body")),
    ("unfreeze body", lambda m: m.unfreeze("body")),
    ("freeze head", lambda m: m.freeze("head")),
    ("freeze_to body", lambda m: m.freeze_to("body")),
]


def _skip_unless_backend_works(backend: str) -> None:
    """Skips (with the reason) when this machine cannot compile with ``backend`` (no C++ toolchain, say)."""
    torch._dynamo.reset()
    try:
        torch.compile(lambda x: x * 2 + 1, backend=backend)(torch.ones(2))
    except Exception as e:  # noqa: BLE001 - whatever the toolchain raises
        pytest.skip(f"torch.compile(backend={backend!r}) does not work here: {type(e).__name__}: {e}"[:300])


def _grads(model: nn.Module, params: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    for p in params.parameters():
        p.grad = None
    torch.manual_seed(3)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad for n, p in params.named_parameters()}


@pytest.mark.parametrize("make", FORMS.values(), ids=FORMS.keys())
@pytest.mark.parametrize(("backend", "p_drop", "tol"), BACKENDS)
def test_compiled_model_gets_eager_gradients_across_freeze_changes(backend, p_drop, tol, make):
    _skip_unless_backend_works(backend)
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = make(p_drop).train()
    inner = copy.deepcopy(eager)
    compiled = torch.compile(inner, backend=backend)
    x = torch.randn(8, 6)
    for what, change in STEPS:
        change(eager)
        change(compiled)
        out_e, grads_e = _grads(eager, eager, x)
        out_c, grads_c = _grads(compiled, inner, x)
        torch.testing.assert_close(out_c, out_e, **tol, msg=what)
        for name, g in grads_e.items():
            assert (grads_c[name] is None) == (g is None), f"{what}: {name}"
            assert (g is None) == (not eager.get_parameter(name).requires_grad)  # newly frozen: none
            if g is not None:
                torch.testing.assert_close(grads_c[name], g, **tol, msg=f"{what}: {name}")
        assert compiled.frozen_groups == eager.frozen_groups
        assert inner.body[1].training == eager.body[1].training  # frozen BN held in eval under compile too
        if tol == {"rtol": 0, "atol": 0}:
            assert torch.equal(inner.body[1].running_mean, eager.body[1].running_mean)
    torch._dynamo.reset()
