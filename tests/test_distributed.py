"""DDP and FSDP2 with frozen groups: the 2 gloo ranks of tests/_two_procs.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _two_procs import FEATURES, HEAD, outcome
from torch import nn

import freezable as fz

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def _same(a: dict, b: dict, names) -> bool:
    return all(torch.equal(a[n], b[n]) for n in names)


STATS = ["stem.1.running_mean", "stem.1.running_var", "stage1.1.running_mean", "stage1.1.running_var"]


FORMS = pytest.mark.parametrize("form", ["", "_in_place"], ids=["mixin", "in_place"])


@FORMS
def test_ddp_with_groups_frozen_before_wrapping(form):
    a, b = outcome("ddp_scenarios" + form)
    assert all(a["A_grads"][n] is None for n in FEATURES)  # frozen: no gradient, not in DDP's reducer
    assert _same(a["A_grads"], b["A_grads"], HEAD)   # find_unused_parameters=False: trainable ones synced
    assert _same(a["initial"], a["A_params"], FEATURES + STATS)
    assert not _same(a["initial"], a["A_params"], HEAD)


@FORMS
def test_ddp_unfreeze_after_wrapping_raises_then_rewrap_syncs_gradients(form):
    a, b = outcome("ddp_scenarios" + form)
    for r in (a, b):  # every rank stops with the same clear error
        assert "changed after it was wrapped in DistributedDataParallel (unfrozen: 'stem.0.weight'" in r["B_error"]
        assert "freezable.rewrap_ddp(ddp_model)" in r["B_error"]
    assert all(a["C_grads"][n] is not None for n in FEATURES)
    assert _same(a["C_grads"], b["C_grads"], FEATURES + HEAD)  # different data per rank: averaged
    assert _same(a["C_params"], b["C_params"], FEATURES + HEAD)
    assert a["C_find_unused"] is False  # settings carried over


@FORMS
def test_ddp_freeze_after_wrapping_raises_then_rewrap_trains_the_rest(form):
    a, b = outcome("ddp_scenarios" + form)
    assert "(frozen: 'head.weight', 'head.bias')" in a["D_error"] and a["D_error"] == b["D_error"]
    assert all(a["D_grads"][n] is None for n in HEAD)
    assert _same(a["D_before"], a["D_params"], HEAD)
    assert _same(a["D_grads"], b["D_grads"], FEATURES) and _same(a["D_params"], b["D_params"], FEATURES)
    assert "(unfrozen: 'head.weight')" in a["E_error"]  # a raw requires_grad_ change is caught too


@FORMS
def test_fsdp2_with_frozen_groups_trains_and_keeps_them_bit_identical(form):
    a, b = outcome("fsdp_scenarios" + form)
    assert a["frozen_groups"] == ("stem", "stage1") and a["bn_training"] == (False, False)
    stats = STATS + ["stem.1.num_batches_tracked", "stage1.1.num_batches_tracked"]
    assert _same(a["initial"], a["trained"], FEATURES + stats) and _same(b["initial"], b["trained"], FEATURES)
    assert not _same(a["initial"], a["trained"], HEAD)
    assert _same(a["trained"], b["trained"], FEATURES + HEAD)
    # unfreezing a sharded model trains the group, identically on both ranks
    assert not _same(a["trained"], a["unfrozen"], FEATURES[:1])
    assert _same(a["unfrozen"], b["unfrozen"], FEATURES + HEAD)


def test_accelerate_prepare_trains_an_in_place_model_and_keeps_the_frozen_part_bit_identical():
    a, b = outcome("accelerate_scenario")
    assert a["distributed"] == 2 and a["wrapper"] == "DistributedDataParallel"
    assert a["unwrapped"] == (True, "PlainBody")  # unwrap_model gives back the model itself, its class kept
    assert a["bn_training"] == (False, False) and a["check_ok"]
    stats = STATS + ["stem.1.num_batches_tracked", "stage1.1.num_batches_tracked"]
    assert _same(a["initial"], a["trained"], FEATURES + stats) and not _same(a["initial"], a["trained"], HEAD)
    assert _same(a["trained"], b["trained"], FEATURES + HEAD)
    assert "changed after it was wrapped in DistributedDataParallel" in a["error"]
    assert not _same(a["trained"], a["unfrozen"], FEATURES[:1])  # rewrapped: the unfrozen stem trains, in sync
    assert _same(a["unfrozen"], b["unfrozen"], FEATURES + HEAD)


def test_without_torch_distributed_nothing_is_watched(net):
    net.freeze().unfreeze()
    assert not net._forward_pre_hooks


def test_rewrap_ddp_refuses_settings_it_cannot_carry_over():
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP.__new__(DDP)  # no process group needed to reach the check
    ddp.__dict__["_delay_all_reduce_params"] = [nn.Parameter(torch.ones(1))]
    with pytest.raises(fz.FreezableError, match="cannot carry over delay_all_reduce_named_params"):
        fz.rewrap_ddp(ddp)
