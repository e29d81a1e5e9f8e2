"""FeatureCache: hits, misses, caps, the disk round trip, and every refusal."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import freezable as fz


class Counting(nn.Module):
    """A deterministic backbone that counts the samples it has computed."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.linear = nn.Linear(4, 3)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.linear(self.body(x))


@pytest.fixture
def backbone() -> fz.FrozenBackbone:
    torch.manual_seed(0)
    return fz.FrozenBackbone(Counting())


@pytest.fixture
def data() -> torch.Tensor:
    return torch.randn(6, 4, generator=torch.Generator().manual_seed(1))


def test_hits_skip_the_backbone_and_return_the_same_features(backbone: fz.FrozenBackbone, data: torch.Tensor) -> None:
    cache = fz.FeatureCache(backbone)
    first = cache(data, keys=list(range(6)))
    inner = backbone.backbone
    expected = inner.linear(inner.body(data)).detach()
    torch.testing.assert_close(first, expected)
    assert (cache.hits, cache.misses, backbone.backbone.seen) == (0, 6, 6)
    again = cache(data[[4, 1]], keys=torch.tensor([4, 1]))
    assert torch.equal(again, expected[[4, 1]])
    assert (cache.hits, cache.misses, backbone.backbone.seen) == (2, 6, 6)
    assert not again.is_inference() and not again.requires_grad


def test_a_mixed_batch_computes_only_the_misses(backbone: fz.FrozenBackbone, data: torch.Tensor) -> None:
    cache = fz.FeatureCache(backbone)
    cache(data[:3], keys=[0, 1, 2])
    out = cache(data[1:5], keys=[1, 2, 3, 4])
    assert (cache.hits, cache.misses, backbone.backbone.seen) == (2, 5, 5)
    inner = backbone.backbone
    torch.testing.assert_close(out, inner.linear(inner.body(data[1:5])).detach())


def test_item_cap_evicts_the_least_recently_used(backbone: fz.FrozenBackbone, data: torch.Tensor) -> None:
    cache = fz.FeatureCache(backbone, max_items=3)
    cache(data[:3], keys=["a", "b", "c"])
    cache(data[:1], keys=["a"])  # a is now the most recent: b is the oldest
    cache(data[3:4], keys=["d"])
    assert len(cache) == 3
    seen = backbone.backbone.seen
    cache(data[:1], keys=["a"])
    assert backbone.backbone.seen == seen  # still cached
    cache(data[1:2], keys=["b"])
    assert backbone.backbone.seen == seen + 1  # evicted, recomputed


def test_byte_cap_is_kept(backbone: fz.FrozenBackbone, data: torch.Tensor) -> None:
    per_sample = 3 * 4  # three float32 features
    cache = fz.FeatureCache(backbone, max_bytes=2 * per_sample)
    cache(data, keys=list(range(6)))
    assert len(cache) == 2 and cache.nbytes == 2 * per_sample
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_disk_round_trip_in_a_new_cache(backbone: fz.FrozenBackbone, data: torch.Tensor, tmp_path) -> None:
    first = fz.FeatureCache(backbone, directory=tmp_path / "features")(data, keys=[(0, "x"), 1, 2, 3, 4, 5])
    assert len(list((tmp_path / "features").glob("*.pt"))) == 6
    seen = backbone.backbone.seen
    fresh = fz.FeatureCache(backbone, directory=tmp_path / "features", max_items=1)
    again = fresh(data, keys=[(0, "x"), 1, 2, 3, 4, 5])
    assert torch.equal(again, first)
    assert backbone.backbone.seen == seen and fresh.hits == 6
    fresh.clear(disk=True)
    assert not list((tmp_path / "features").glob("*.pt"))


def test_disk_file_of_another_key_is_refused(backbone: fz.FrozenBackbone, data: torch.Tensor, tmp_path) -> None:
    cache = fz.FeatureCache(backbone, directory=tmp_path)
    cache(data[:1], keys=[0])
    cache._path(0).rename(cache._path(1))
    cache.clear()
    with pytest.raises(fz.FreezableError, match="does not hold the cached output of key 1"):
        cache(data[:1], keys=[1])


def test_tuple_outputs_are_cached() -> None:
    class Two(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x.sum(1)

    cache = fz.FeatureCache(Two().eval())
    x = torch.randn(3, 4)
    cache(x, keys=[0, 1, 2])
    a, b = cache(x[[2, 0]], keys=[2, 0])
    assert torch.equal(a, x[[2, 0]] * 2) and torch.equal(b, x[[2, 0]].sum(1))


def test_refuses_a_backbone_that_trains() -> None:
    fb = fz.FrozenBackbone(torchvision.models.resnet18(), trainable=["head"])
    message = "fully frozen backbone, but 2 parameters train: backbone.fc.weight, backbone.fc.bias"
    with pytest.raises(fz.FreezableError, match=message):
        fz.FeatureCache(fb)
    cache = fz.FeatureCache(fz.FrozenBackbone(torchvision.models.resnet18()))
    cache.backbone.unfreeze("head")
    with pytest.raises(fz.FreezableError, match="fully frozen"):
        cache(torch.randn(1, 3, 32, 32), keys=[0])


@pytest.mark.parametrize("layer", [nn.Dropout(0.5), nn.BatchNorm1d(4)])
def test_refuses_modules_in_a_random_training_mode(layer: nn.Module) -> None:
    model = nn.Sequential(nn.Linear(4, 4), layer).requires_grad_(False).train()
    with pytest.raises(fz.FreezableError, match=rf"'1' \({type(layer).__name__}\) is in training mode"):
        fz.FeatureCache(model)(torch.randn(2, 4), keys=[0, 1])
    model.eval()
    assert fz.FeatureCache(model)(torch.randn(2, 4), keys=[0, 1]).shape == (2, 4)


def test_a_held_module_set_to_train_is_accepted(data: torch.Tensor) -> None:
    fb = fz.FrozenBackbone(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)))
    fb.backbone[1].train()  # held: the hold hook puts it back in eval before it runs
    out = fz.FeatureCache(fb)(data, keys=list(range(6)))
    torch.testing.assert_close(out, fb.backbone[0](data).detach())
    assert not fb.backbone[1].training


def test_refuses_batch_norm_without_running_statistics() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)).requires_grad_(False).eval()
    with pytest.raises(fz.FreezableError, match="keeps no running statistics"):
        fz.FeatureCache(model)(torch.randn(2, 4), keys=[0, 1])


def test_refuses_mismatched_keys_and_inputs(backbone: fz.FrozenBackbone, data: torch.Tensor) -> None:
    cache = fz.FeatureCache(backbone)
    with pytest.raises(fz.FreezableError, match="got 2 keys for a batch of 6 samples"):
        cache(data, keys=[0, 1])
    with pytest.raises(fz.FreezableError, match="1-d integer tensor"):
        cache(data, keys=torch.zeros(6))
    with pytest.raises(fz.FreezableError, match="key must be an int, a str or a tuple.*float"):
        cache(data, keys=[0.5] * 6)
    with pytest.raises(fz.FreezableError, match="sequence with one key per sample"):
        cache(data, keys="abcdef")
    with pytest.raises(fz.FreezableError, match="requires grad"):
        cache(data.requires_grad_(), keys=list(range(6)))
    with pytest.raises(fz.FreezableError, match="max_items must be a positive int"):
        fz.FeatureCache(backbone, max_items=0)
    assert len(cache) == 0 and cache.misses == 0  # nothing was computed by a refused call
