"""The Lightning callback, with a real lightning.Trainer on CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import snapshot

import freezable as fz

L = pytest.importorskip("lightning")
pytestmark = pytest.mark.filterwarnings(
    "ignore:Found .* module.*in eval mode", "ignore:You defined a .validation_step.", "ignore:.*LeafSpec.*is deprecated"
)
from _lit_models import Lit, loader  # noqa: E402
from _two_procs import Body, outcome  # noqa: E402

from freezable.errors import FreezeStateError  # noqa: E402
from freezable.integrations.lightning import GradualUnfreezing, restore_groups  # noqa: E402


def _trainer(callback, epochs: int = 3) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, limit_train_batches=2, limit_val_batches=1,
        callbacks=[callback], enable_progress_bar=False, logger=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=1,
    )


@pytest.mark.parametrize("use_param_groups", [False, True], ids=["trainable_parameters", "param_groups"])
def test_callback_unfreezes_on_schedule_and_holds_frozen_norms(use_param_groups):
    lit = Lit(use_param_groups)
    stem_before = snapshot(lit.net.stem)
    callback = GradualUnfreezing({1: "stage1", 2: ["stem"]})
    _trainer(callback).fit(lit, loader(), loader())

    by_epoch = {e: (groups, stem_mode, stage1_mode) for e, groups, stem_mode, stage1_mode in lit.seen}
    assert by_epoch == {
        0: (("stem", "stage1"), False, False),  # frozen BN held in eval through Lightning's train() calls
        1: (("stem",), False, True),
        2: ((), True, True),
    }
    assert not ({"0.weight", "1.weight", "1.running_mean"} - {n for n, t in stem_before.items()
                                                              if not torch.equal(t, lit.net.stem.state_dict()[n])})
    opt = lit.trainer.optimizers[0]
    in_opt = [p for g in opt.param_groups for p in g["params"]]
    assert len(in_opt) == len({id(p) for p in in_opt}) == len(list(lit.net.parameters()))
    expected_groups = 6 if use_param_groups else 3  # param_groups: nothing added; else one group per milestone
    assert len(opt.param_groups) == expected_groups
    assert callback.state_dict()["last_epoch"] == 2


def test_frozen_parts_stay_bit_identical_while_frozen():
    lit = Lit(use_param_groups=False)
    before = snapshot(lit.net)
    _trainer(GradualUnfreezing({5: "stage1"}), epochs=2).fit(lit, loader(), loader())
    moved = {n for n, t in before.items() if not torch.equal(t, snapshot(lit.net)[n])}
    assert moved == {"head.weight", "head.bias"}  # BN statistics of the frozen stem and stage1 included


def test_callback_takes_a_built_schedule_and_resumes_from_its_state():
    lit = Lit(use_param_groups=True)
    schedule = fz.UnfreezeSchedule(lit.net, {1: "stage1"})
    callback = GradualUnfreezing(schedule)
    assert callback.model is lit.net
    state = {**schedule.state_dict(), "last_epoch": 1}
    other = GradualUnfreezing({})
    other.load_state_dict(state)  # before setup: kept until the Trainer sets up
    lit2 = Lit(use_param_groups=True)
    _trainer(other, epochs=1).fit(lit2, loader())
    assert other.schedule.milestones == {1: ["stage1"]} and lit2.seen[0][1] == ("stem", "stage1")


def test_callback_errors():
    with pytest.raises(TypeError, match="GradualUnfreezing's schedule must be an UnfreezeSchedule or a mapping of epochs to groups, not list"):
        GradualUnfreezing(["stage1"])
    with pytest.raises(fz.FreezableError, match="has no model yet"):
        GradualUnfreezing({}).model

    class Plain(Lit):
        def __init__(self):
            super().__init__(use_param_groups=False)
            self.net2 = Body()

    with pytest.raises(fz.FreezableError, match=r"several Freezable submodules: \['net', 'net2'\]"):
        GradualUnfreezing({}).setup(None, Plain(), "fit")


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs gloo")
@pytest.mark.parametrize("form", ["", "_in_place"], ids=["mixin", "in_place"])
def test_callback_under_ddp_rebuilds_the_wrapper_and_keeps_ranks_in_sync(form):
    """Lightning's DDP strategy on the 2 gloo ranks of tests/_two_procs.py, each rank on its own batches."""
    for result in outcome("lightning_scenario" + form):
        assert result["class"] == ("Body" if not form else "PlainBody")
        assert result["equal"]  # without the rebuild: DDPFreezeStateError at epoch 1
        assert [(e, groups) for e, groups, *_ in result["seen"]] == [(0, ("stem", "stage1")), (1, ("stem",)), (2, ())]


def test_resume_from_a_lightning_checkpoint_restores_groups_and_state(tmp_path):
    lit = Lit(use_param_groups=False)  # the optimizer gains a group at epoch 1 and 2
    first = _trainer(GradualUnfreezing({1: "stage1", 2: ["stem"]}), epochs=2)
    first.fit(lit, loader(), loader())
    first.save_checkpoint(tmp_path / "last.ckpt")
    assert len(first.optimizers[0].param_groups) == 2

    resumed = Lit(use_param_groups=False)  # fresh: initial freeze state, optimizer of one group
    second = _trainer(GradualUnfreezing({1: "stage1", 2: ["stem"]}), epochs=3)
    second.fit(resumed, loader(), loader(), ckpt_path=tmp_path / "last.ckpt")
    assert [(e, groups) for e, groups, *_ in resumed.seen] == [(2, ()), (2, ())]
    assert [g.get("name") for g in second.optimizers[0].param_groups] == [None, "unfrozen@1:stage1",
                                                                           "unfrozen@2:stem"]


@pytest.mark.parametrize("same_object", [True, False], ids=["same_model_object", "fresh_model_object"])
def test_resume_into_the_same_or_a_fresh_model_object(tmp_path, same_object):
    lit = Lit(use_param_groups=False)  # optimizer from trainable_parameters(): a group per milestone
    first = _trainer(GradualUnfreezing({1: "stage1", 2: ["stem"]}), epochs=2)
    first.fit(lit, loader(), loader())
    first.save_checkpoint(tmp_path / "last.ckpt")
    names = {id(p): n for n, p in lit.named_parameters()}
    saved_groups = [[names[id(p)] for p in g["params"]] for g in first.optimizers[0].param_groups]
    assert len(saved_groups) == 2  # head; stage1 (unfrozen at epoch 1)

    # the same object has stage1 trainable already: configure_optimizers builds one group of both
    resumed = lit if same_object else Lit(use_param_groups=False)
    second = _trainer(GradualUnfreezing({1: "stage1", 2: ["stem"]}), epochs=3)
    second.fit(resumed, loader(), loader(), ckpt_path=tmp_path / "last.ckpt")
    names = {id(p): n for n, p in resumed.named_parameters()}
    groups = second.optimizers[0].param_groups
    assert [[names[id(p)] for p in g["params"]] for g in groups] == saved_groups + [
        ["net.stem.0.weight", "net.stem.0.bias", "net.stem.1.weight", "net.stem.1.bias"]]  # epoch 2 adds stem
    assert [g.get("name") for g in groups] == [None, "unfrozen@1:stage1", "unfrozen@2:stem"]
    assert [(e, g) for e, g, *_ in resumed.seen][-2:] == [(2, ()), (2, ())]
    assert all(g["momentum"] == 0.9 for g in groups)


def test_restoring_optimizer_groups_checks_the_record_first():
    net = Body()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [list(g["params"]) for g in opt.param_groups]
    with pytest.raises(FreezeStateError, match=r"lacks: \['haed.weight'\]; did you mean 'head.weight'"):
        restore_groups(opt, net, [{"name": None, "params": ["haed.weight"]}])
    with pytest.raises(FreezeStateError, match=r"groups lack: \['stem.0.weight'"):
        restore_groups(opt, net, [{"name": None, "params": ["head.weight", "head.bias"]}])
    assert [list(g["params"]) for g in opt.param_groups] == before
    with pytest.raises(FreezeStateError, match="not a GradualUnfreezing record"):
        GradualUnfreezing({}).load_state_dict({"optimizer_groups": [{"params": "head.weight"}]})
