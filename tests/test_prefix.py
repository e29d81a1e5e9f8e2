"""The frozen prefix run without autograd (and cached): found on a real forward, used only where it is a true
prefix, and giving what the normal forward gives."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torchvision
from conftest import snapshot
from torch import nn

import freezable as fz
from freezable.errors import PrefixWarning


def resnet(upto: str | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = fz.freezable(torchvision.models.resnet18(num_classes=3))
    return model.freeze_to(upto) if upto else model


def batch(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def start(model: nn.Module, **options) -> fz.ProgressiveFreezing:
    """A ProgressiveFreezing that freezes nothing more (its window never ends): only its prefix runner acts."""
    freezing = fz.ProgressiveFreezing(model, "gradient", window=10**9, **options)
    model.train()(batch())  # the probe
    return freezing


def call_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """Modules in the order they are called in a forward (each once)."""
    order: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda m, a: order.append(m)) for m in model.modules() if m is not model]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return list(dict.fromkeys(order))


@pytest.mark.parametrize("upto", ["stem", "block3", "block8"])
def test_the_prefix_is_exactly_the_frozen_part_in_forward_order(upto):
    model = resnet(upto)
    freezing = start(model)
    modules = freezing.runner.modules
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert {id(p) for m in modules for p in m.parameters()} == frozen  # every frozen parameter, nothing else
    order = call_order(model, batch())
    assert [order.index(m) for m in modules] == sorted(order.index(m) for m in modules)  # in forward order
    assert "run without autograd" in freezing.prefix
    if upto == "block8":  # then the pooling (no parameters) too, and the head trains
        assert modules[-1] is model.avgpool and "'fc' (Linear) trains" in freezing.prefix


def test_the_prefix_runs_in_inference_mode_and_the_rest_with_autograd():
    model = resnet("block2")
    seen = {}
    model.layer1[1].conv2.register_forward_hook(lambda m, a, o: seen.update(frozen=torch.is_inference_mode_enabled()))
    model.layer2[0].conv1.register_forward_hook(lambda m, a, o: seen.update(trains=torch.is_inference_mode_enabled()))
    freezing = start(model)  # the probe forward runs as usual
    assert seen == {"frozen": False, "trains": False}
    out = model(batch())
    assert seen == {"frozen": True, "trains": False} and out.requires_grad
    out.sum().backward()
    assert model.layer2[0].conv1.weight.grad is not None and model.layer1[1].conv2.weight.grad is None
    freezing.close()
    model(batch())
    assert seen == {"frozen": False, "trains": False}
    assert "_freezable_prefix" not in model.__dict__


@pytest.mark.parametrize("rule", ["schedule", "gradient"])
def test_training_with_the_prefix_run_without_autograd_is_bit_identical(rule):
    def train(inference_prefix: bool) -> dict[str, torch.Tensor]:
        model = resnet()
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
        settings = {"total_steps": 10, "start": 0.2} if rule == "schedule" else {"window": 2, "threshold": 0.5}
        freezing = fz.ProgressiveFreezing(model, rule, optimizer=opt, inference_prefix=inference_prefix, **settings)
        x, y = batch(8), torch.arange(8) % 3
        used = []
        for step in range(10):
            idx = torch.randperm(8, generator=torch.Generator().manual_seed(step))[:4]
            opt.zero_grad()
            nn.functional.cross_entropy(model.train()(x[idx]), y[idx]).backward()
            opt.step()
            used.append("run without autograd" in freezing.prefix)
            freezing.step()
        assert any(used) == inference_prefix and model.frozen_groups
        return snapshot(model)

    plain, fast = train(False), train(True)
    assert all(torch.equal(t, fast[n]) for n, t in plain.items())


# -- where there is no true prefix, the forward runs as usual ---------------------------------------------------


class Skip(fz.Freezable, nn.Module):
    """A skip connection from inside the frozen part to the head."""

    freeze_groups = {"a": "a", "b": "b", "head": "head"}

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        return self.head(torch.cat([a, self.b(a)], 1))


class Keyword(fz.Freezable, nn.Module):
    freeze_groups = {"a": "a", "head": "head"}

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(input=x))


class Scaled(fz.Freezable, nn.Module):
    """The model's own code changes the input before the first frozen module."""

    freeze_groups = {"a": "a", "head": "head"}

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(x * 2))


@pytest.mark.parametrize(("model", "upto", "chain", "why"), [
    (Skip, "a", ["a"], "'b' (Linear) trains"),
    (Skip, "b", ["a"], "a tensor made inside 'a' (Linear) is read outside the frozen prefix"),
    (Keyword, "a", [], "does not take the model's input as its only argument"),
    (Scaled, "a", [], "does not take the model's input as its only argument"),
])
def test_a_prefix_that_is_not_a_chain_from_the_input_is_cut_short_or_not_used(model, upto, chain, why):
    torch.manual_seed(0)
    model = model().freeze_to(upto)
    x = torch.randn(3, 4)
    expected = model(x)
    freezing = fz.ProgressiveFreezing(model, "gradient", window=10**9)
    for _ in range(2):
        assert torch.equal(model.train()(x), expected)
    assert [n for n, m in model.named_modules() if any(m is c for c in freezing.runner.modules)] == chain
    assert why in freezing.prefix


def test_a_vit_runs_its_patch_embedding_only_the_model_adds_the_position_embedding():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = fz.freezable(timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8))
    model.freeze_to("block2")
    x = batch()
    expected = model.train()(x)
    freezing = fz.ProgressiveFreezing(model, "gradient", window=10**9)
    model(x)
    assert freezing.runner.modules == [model.patch_embed] and torch.equal(model(x), expected)


class Switch(fz.Freezable, nn.Module):
    """A forward whose structure depends on a flag: what no check on one forward can see."""

    freeze_groups = {"a": "a", "b": "b", "head": "head"}

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.mode = "chain"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "chain":
            return self.head(self.b(self.a(x)))
        if self.mode == "b first":
            return self.head(self.a(self.b(x)))
        return self.head(self.b(self.a(x) * 2))  # "scaled": a's output used otherwise than the probe saw


def test_a_forward_that_leaves_the_checked_chain_runs_as_usual_or_raises_when_it_is_too_late():
    torch.manual_seed(0)
    model = Switch().freeze_to("b").train()
    x = torch.randn(3, 4)
    freezing = fz.ProgressiveFreezing(model, "gradient", window=10**9)
    model(x)
    assert len(freezing.runner.modules) == 2
    model.mode = "b first"  # nothing substituted before the chain was left: as usual, and probed again
    with torch.no_grad():
        expected = model.head(model.a(model.b(x)))
    assert torch.equal(model(x), expected) and "waiting" in freezing.prefix
    model.mode = "chain"
    model(x)
    model.mode = "scaled"
    with pytest.raises(fz.FreezableError, match="otherwise than on the forward the prefix was checked on.*"
                                                "inference_prefix=False"):
        model(x)
    assert "forward" not in model.a.__dict__ and "forward" not in model.b.__dict__  # restored even so


def test_no_prefix_without_autograd_or_when_the_input_needs_a_gradient():
    model = resnet("block2")
    seen = []
    model.layer1[0].conv1.register_forward_hook(lambda m, a, o: seen.append(torch.is_inference_mode_enabled()))
    start(model)
    with torch.no_grad():
        model(batch())
    model(batch().requires_grad_())
    model(batch())
    assert seen[1:] == [False, False, True]


def test_a_copy_or_a_pickle_of_the_model_runs_as_usual():
    model = resnet("block2")
    freezing = start(model)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other.__dict__["_freezable_prefix"] is None
        torch.manual_seed(0)
        assert torch.equal(other.train()(batch()), model(batch()))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    assert "run without autograd" in freezing.prefix


def test_a_new_progressive_freezing_takes_the_model_s_prefix_runner_over():
    model = resnet("block2")
    first = start(model)
    second = start(model)
    assert not first.runner.active and second.runner.active and "closed" in first.prefix
    hooks = [h for h in model._forward_pre_hooks.values() if getattr(h, "__name__", "") == "_before_forward"]
    assert len(hooks) == 1 and model.__dict__["_freezable_prefix"] is second.runner


# -- the cache ---------------------------------------------------------------------------------------------


def test_the_cache_serves_the_prefix_and_grows_with_it():
    model = resnet("block2")
    freezing = fz.ProgressiveFreezing(model, "schedule", total_steps=100, start=0.5, cache=True)
    x, keys = batch(8), list(range(8))
    model.train()
    with freezing.cache_keys(keys):
        model(x)  # the probe
        cached = model(x)  # misses: computed
        again = model(x)  # hits
    cache = freezing.runner.feature_cache
    assert (cache.hits, cache.misses, len(cache)) == (8, 8, 8)
    expected = model(x)  # the prefix without the cache
    assert torch.allclose(cached, expected, atol=1e-6) and torch.equal(cached, again)

    model.freeze_to("block3")  # the prefix grows: the cache is extended over its entries, not refilled
    freezing.runner.invalidate()
    model(x)  # the probe
    with freezing.cache_keys(keys):
        grown = model(x)
    longer = freezing.runner.feature_cache
    assert longer is not cache and (longer.hits, longer.misses) == (8, 0)
    assert torch.allclose(grown, model(x), atol=1e-5)


def test_new_weights_in_the_prefix_are_never_served_from_the_cache():
    model = resnet("block2")
    freezing = fz.ProgressiveFreezing(model, "gradient", window=10**9, cache=True)
    x = batch()
    model.train()(x)
    with freezing.cache_keys([0, 1, 2, 3]):
        model(x)
        other = torchvision.models.resnet18(num_classes=3).state_dict()
        model.load_state_dict(other)  # e.g. a checkpoint loaded into the running model
        served = model(x)
    assert torch.allclose(served, model(x), atol=1e-6)


def test_a_random_prefix_is_not_cached():
    class Noisy(fz.Freezable, nn.Sequential):
        freeze_groups = {"a": "1", "head": "2"}

    torch.manual_seed(0)
    model = Noisy(nn.Dropout(0.5), nn.Linear(4, 4), nn.Linear(4, 2)).freeze_to("a").train()
    freezing = fz.ProgressiveFreezing(model, "gradient", window=10**9, cache=True)
    with pytest.warns(PrefixWarning, match=r"\(0, 1\) runs uncached: it draws random numbers"):
        model(torch.randn(3, 4))
    assert freezing.runner.feature_cache is None and "not cached" in freezing.prefix
    x = torch.randn(3, 4)
    with freezing.cache_keys([0, 1, 2]):
        torch.manual_seed(3)
        out = model(x)
    freezing.close()
    torch.manual_seed(3)
    assert torch.equal(out, model(x))  # the same draws as the normal forward


def test_a_key_that_comes_with_another_input_is_refused_with_verify_inputs():
    model = resnet("block2")
    freezing = fz.ProgressiveFreezing(model, "gradient", window=10**9, cache=True, verify_inputs=True)
    model.train()(batch())
    with freezing.cache_keys([0, 1, 2, 3]):
        model(batch(seed=1))
        with pytest.raises(fz.FreezableError, match="key 0 was cached for another input"):
            model(batch(seed=2))
