"""DDP and FSDP2 with frozen groups: 2 processes, gloo, CPU (one spawn runs every scenario)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import _dist_workers
import freezable as fz

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of 2 ranks saw in the DDP and FSDP2 scenarios of tests/_dist_workers.py."""
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_dist_workers.run, args=(2, str(out / "store"), str(out), ["ddp_scenarios", "fsdp_scenarios"]),
             nprocs=2, join=True)
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in results:
        for name, res in r.items():
            assert "exception" not in res, f"{name} failed:\n{res['exception']}"
    return results


def _same(a: dict, b: dict, names) -> bool:
    return all(torch.equal(a[n], b[n]) for n in names)


FEATURES = [n for n, _ in _dist_workers.Net().features.named_parameters(prefix="features")]
CLASSIFIER = ["classifier.weight", "classifier.bias"]


def test_ddp_with_groups_frozen_before_wrapping(ranks):
    a, b = ranks[0]["ddp_scenarios"], ranks[1]["ddp_scenarios"]
    assert all(a["A_grads"][n] is None for n in FEATURES)  # frozen: no gradient, not in DDP's reducer
    assert _same(a["A_grads"], b["A_grads"], CLASSIFIER)   # find_unused_parameters=False: trainable ones synced
    assert _same(a["initial"], a["A_params"], FEATURES + ["features.1.running_mean", "features.1.running_var"])
    assert not _same(a["initial"], a["A_params"], CLASSIFIER)


def test_ddp_unfreeze_after_wrapping_raises_then_rewrap_syncs_gradients(ranks):
    a, b = ranks[0]["ddp_scenarios"], ranks[1]["ddp_scenarios"]
    for r in (a, b):  # every rank stops with the same clear error
        assert "changed after it was wrapped in DistributedDataParallel (unfrozen: 'features.0.weight'" in r["B_error"]
        assert "freezable.rewrap_ddp(ddp_model)" in r["B_error"]
    assert all(a["C_grads"][n] is not None for n in FEATURES)
    assert _same(a["C_grads"], b["C_grads"], FEATURES + CLASSIFIER)  # different data per rank: averaged
    assert _same(a["C_params"], b["C_params"], FEATURES + CLASSIFIER)
    assert a["C_find_unused"] is False  # settings carried over


def test_ddp_freeze_after_wrapping_raises_then_rewrap_trains_the_rest(ranks):
    a, b = ranks[0]["ddp_scenarios"], ranks[1]["ddp_scenarios"]
    assert "(frozen: 'classifier.weight', 'classifier.bias')" in a["D_error"] and a["D_error"] == b["D_error"]
    assert all(a["D_grads"][n] is None for n in CLASSIFIER)
    assert _same(a["D_before"], a["D_params"], CLASSIFIER)
    assert _same(a["D_grads"], b["D_grads"], FEATURES) and _same(a["D_params"], b["D_params"], FEATURES)
    assert "(unfrozen: 'classifier.weight')" in a["E_error"]  # a raw requires_grad_ change is caught too


def test_fsdp2_with_frozen_groups_trains_and_keeps_them_bit_identical(ranks):
    a, b = ranks[0]["fsdp_scenarios"], ranks[1]["fsdp_scenarios"]
    assert a["frozen_groups"] == ("features",) and a["bn_training"] is False
    stats = ["features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked"]
    assert _same(a["initial"], a["trained"], FEATURES + stats) and _same(b["initial"], b["trained"], FEATURES)
    assert not _same(a["initial"], a["trained"], CLASSIFIER)
    assert _same(a["trained"], b["trained"], FEATURES + CLASSIFIER)
    # unfreezing a sharded model trains the group, identically on both ranks
    assert not _same(a["trained"], a["unfrozen"], FEATURES[:1])
    assert _same(a["unfrozen"], b["unfrozen"], FEATURES + CLASSIFIER)


def test_without_torch_distributed_nothing_is_watched(net):
    net.freeze().unfreeze()
    assert not net._forward_pre_hooks


def test_rewrap_ddp_refuses_settings_it_cannot_carry_over():
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP.__new__(DDP)  # no process group needed to reach the check
    ddp.__dict__["_delay_all_reduce_params"] = [nn.Parameter(torch.ones(1))]
    with pytest.raises(fz.FreezableError, match="cannot carry over delay_all_reduce_named_params"):
        fz.rewrap_ddp(ddp)
