"""FeatureCache: hits, misses, caps, the disk round trip, every refusal, and faults injected into each guarantee.

Every fault test checks what comes back against the backbone's own output, computed without the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import _cache_workers
import pytest
import torch
import torchvision
from torch import nn

import freezable as fz
from freezable.cache.store import MANIFEST, entry_path


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
    message = "fully frozen backbone, but 2 parameters train: 'backbone.fc.weight', 'backbone.fc.bias'"
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


# -- weights: a cache never serves the features of other weights ------------------------------------------------


def own(fb: fz.FrozenBackbone, x: torch.Tensor) -> torch.Tensor:
    """The oracle: the backbone's output, computed without the cache."""
    with torch.no_grad():
        inner = fb.backbone
        return inner.linear(inner.body(x))


def matches(out: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to float rounding: a batch of another size may sum in another order."""
    return out.shape == expected.shape and torch.allclose(out, expected, rtol=1e-5, atol=1e-6)


def seeded(seed: int) -> fz.FrozenBackbone:
    torch.manual_seed(seed)
    return fz.FrozenBackbone(Counting())


def test_other_weights_in_the_same_directory_are_refused_or_cleared(data: torch.Tensor, tmp_path: Path) -> None:
    first, second = seeded(0), seeded(1)
    fz.FeatureCache(first, directory=tmp_path)(data, keys=list(range(6)))
    with pytest.raises(fz.FreezableError, match=r"holds the features of other weights.*FrozenBackbone\(Counting\)"
                                                r".*on_mismatch='clear'"):
        fz.FeatureCache(second, directory=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 6  # the refusal deleted nothing
    cache = fz.FeatureCache(second, directory=tmp_path, on_mismatch="clear")
    assert matches(cache(data, keys=list(range(6))), own(second, data)) and cache.misses == 6
    assert not torch.allclose(own(first, data), own(second, data))
    with pytest.raises(fz.FreezableError, match="other weights"):
        fz.FeatureCache(first, directory=tmp_path)  # the directory now belongs to the second model


@pytest.mark.parametrize("change", ["in_place", "load_state_dict", "load_state_dict_assign", "replace_module"])
def test_changed_weights_are_detected_before_an_entry_is_served(backbone: fz.FrozenBackbone, data: torch.Tensor,
                                                                change: str) -> None:
    cache = fz.FeatureCache(backbone)
    cache(data, keys=list(range(6)))
    other = Counting()
    if change == "in_place":
        with torch.no_grad():
            backbone.backbone.linear.weight[0, 0] += 1
    elif change == "load_state_dict":
        backbone.load_state_dict(other.state_dict())
    elif change == "load_state_dict_assign":
        backbone.load_state_dict(other.state_dict(), assign=True)
    else:
        backbone.backbone.body[1] = nn.GELU()
    message = "a submodule was replaced" if change == "replace_module" else r"parameter backbone\.linear\.weight"
    with pytest.raises(fz.FreezableError, match=rf"weights changed since the cache was filled \(.*{message}"):
        cache(data, keys=list(range(6)))
    assert (cache.hits, len(cache)) == (0, 6)  # the refused call changed nothing
    cache.clear()
    out = cache(data, keys=list(range(6)))
    expected = backbone.backbone(data) if change == "replace_module" else own(backbone, data)
    assert matches(out, expected.detach())


def test_on_mismatch_clear_starts_afresh_in_memory_and_on_disk(backbone: fz.FrozenBackbone, data: torch.Tensor,
                                                              tmp_path: Path) -> None:
    cache = fz.FeatureCache(backbone, directory=tmp_path, on_mismatch="clear")
    before = cache(data, keys=list(range(6)))
    backbone.load_state_dict(Counting().state_dict())
    after = cache(data[:2], keys=[0, 1])
    assert matches(after, own(backbone, data[:2])) and not torch.equal(after, before[:2])
    assert len(cache) == 2 and len(list(tmp_path.glob("*.pt"))) == 2  # the old weights' files are gone
    assert fz.FeatureCache(backbone, directory=tmp_path).weights_fingerprint == cache.weights_fingerprint


def test_writes_that_keep_the_values_keep_the_cache(backbone: fz.FrozenBackbone, data: torch.Tensor) -> None:
    cache = fz.FeatureCache(backbone)
    first = cache(data, keys=list(range(6)))
    backbone.load_state_dict(backbone.state_dict())  # the same checkpoint again: versions move, values don't
    with torch.no_grad():
        backbone.backbone.linear.weight.mul_(1)
    seen = backbone.backbone.seen
    assert torch.equal(cache(data, keys=list(range(6))), first) and backbone.backbone.seen == seen


def test_writes_through_data_need_check_weights(backbone: fz.FrozenBackbone, data: torch.Tensor) -> None:
    cache = fz.FeatureCache(backbone)
    cache(data, keys=list(range(6)))
    backbone.backbone.linear.bias.data.add_(1)  # .data has its own version counter: no per-call check sees this
    with pytest.raises(fz.FreezableError, match=r"1 tensors differ: 'parameter backbone\.linear\.bias'"):
        cache.check_weights()


def test_clear_without_disk_refuses_to_keep_old_files(backbone: fz.FrozenBackbone, data: torch.Tensor,
                                                      tmp_path: Path) -> None:
    cache = fz.FeatureCache(backbone, directory=tmp_path)
    cache(data, keys=list(range(6)))
    backbone.load_state_dict(Counting().state_dict())
    with pytest.raises(fz.FreezableError, match=r"holds the features of the old ones: call clear\(disk=True\)"):
        cache.clear()
    assert len(cache) == 6
    cache.clear(disk=True)
    assert matches(cache(data, keys=list(range(6))), own(backbone, data)) and cache.misses == 12


# -- crash safety: a bad file is a miss, never a crash ------------------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def foreign(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


def another_key(path: Path) -> None:
    path.write_bytes(entry_path(path.parent, 5).read_bytes())


def old_format(path: Path) -> None:  # what freezable 0.3 wrote: no weights fingerprint
    torch.save({"format": "freezable.feature_cache", "key": "0", "kind": "tensor", "tensors": [torch.zeros(3)]}, path)


@pytest.mark.parametrize("damage", [truncate, random_bytes, foreign, another_key, old_format],
                         ids=lambda f: f.__name__)
def test_a_bad_file_is_a_miss_with_one_warning(backbone: fz.FrozenBackbone, data: torch.Tensor, tmp_path: Path,
                                               damage) -> None:
    fz.FeatureCache(backbone, directory=tmp_path)(data, keys=list(range(6)))
    path = entry_path(tmp_path, 0)
    damage(path)
    cache = fz.FeatureCache(backbone, directory=tmp_path)
    with pytest.warns(UserWarning, match=rf"FeatureCache ignores {path}") as caught:
        out = cache(data, keys=list(range(6)))
    assert len(caught) == 1
    assert matches(out, own(backbone, data)) and (cache.hits, cache.misses) == (5, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file was replaced by a good one
        fresh = fz.FeatureCache(backbone, directory=tmp_path)
        assert matches(fresh(data[:1], keys=[0]), own(backbone, data[:1])) and fresh.hits == 1


def test_a_bad_manifest_is_rewritten_with_one_warning(backbone: fz.FrozenBackbone, data: torch.Tensor,
                                                      tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text('{"format": "freezable.feature_ca')
    with pytest.warns(UserWarning, match=rf"ignores {tmp_path / MANIFEST}: it cannot be read"):
        cache = fz.FeatureCache(backbone, directory=tmp_path)
    assert matches(cache(data, keys=list(range(6))), own(backbone, data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fz.FeatureCache(backbone, directory=tmp_path)


def test_a_full_disk_keeps_the_features_in_memory(backbone: fz.FrozenBackbone, data: torch.Tensor, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = fz.FeatureCache(backbone, directory=tmp_path)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.warns(UserWarning, match="could not write to .*No space left on device"):
        out = cache(data, keys=list(range(6)))
    assert matches(out, own(backbone, data)) and len(cache) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]  # no entry and no temporary file left


WORKERS = Path(__file__).with_name("_cache_workers.py")


def run_worker(*args: str) -> subprocess.Popen:
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(WORKERS), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_writer_killed_half_way_leaves_no_file_to_read(tmp_path: Path) -> None:
    worker = run_worker("killed", str(tmp_path))
    try:
        out, err = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == -9, (out, err)
    leftovers = [p for p in tmp_path.iterdir() if p.name != MANIFEST]
    assert [p.name.startswith(".tmp-") for p in leftovers] == [True]  # only the half-written temporary file
    backbone, data = _cache_workers.make_backbone(), _cache_workers.make_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing reads the half-written file
        cache = fz.FeatureCache(backbone, directory=tmp_path)
        out = cache(data[:3], keys=[0, 1, 2])
    with torch.no_grad():
        assert matches(out, backbone.backbone(data[:3])) and cache.misses == 3
    cache.clear(disk=True)
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]


def test_two_processes_sharing_a_directory_read_only_whole_files(tmp_path: Path) -> None:
    worker = run_worker("share", str(tmp_path), "1")  # one process; this test is the other
    try:
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read()[-3000:]
        with warnings.catch_warnings():
            _cache_workers.share(str(tmp_path), "2")  # raises on a warning or on wrong features
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0 and out.strip() == "ok", err[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


# -- inputs -------------------------------------------------------------------------------------------------------


def test_verify_inputs_refuses_another_input_behind_a_known_key(backbone: fz.FrozenBackbone, data: torch.Tensor,
                                                                tmp_path: Path) -> None:
    cache = fz.FeatureCache(backbone, directory=tmp_path, verify_inputs=True)
    cache(data, keys=list(range(6)))
    assert matches(cache(data[[3, 1]], keys=[3, 1]), own(backbone, data[[3, 1]]))
    flipped = data.flip(-1)
    with pytest.raises(fz.FreezableError, match=r"key 2 was cached for another input.*Random augmentation"):
        cache(torch.cat([data[1:2], flipped[2:3]]), keys=[1, 2])
    assert cache.hits == 2  # the refused call counted nothing
    with pytest.raises(fz.FreezableError, match=r"key 0 was cached for another input \(shape \[4\], now \[2\]\)"):
        cache(data[:1, :2], keys=[0])
    reopened = fz.FeatureCache(backbone, directory=tmp_path, verify_inputs=True)  # the fingerprints are on disk
    with pytest.raises(fz.FreezableError, match="key 4 was cached for another input"):
        reopened(data[4:5] * 1.01, keys=[4])
    assert matches(reopened(data[4:5], keys=[4]), own(backbone, data[4:5]))


def test_without_verify_inputs_a_known_key_is_served_as_documented(backbone: fz.FrozenBackbone,
                                                                   data: torch.Tensor) -> None:
    cache = fz.FeatureCache(backbone)
    cache(data[:1], keys=[0])
    assert matches(cache(data[1:2], keys=[0]), own(backbone, data[:1]))  # the key, not the input, decides
