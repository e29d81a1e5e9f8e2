"""The Lightning callback, with a real lightning.Trainer on CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import snapshot
from torch import nn

import freezable as fz

L = pytest.importorskip("lightning")
pytestmark = pytest.mark.filterwarnings("ignore:Found .* module.*in eval mode", "ignore:You defined a .validation_step.")
from freezable.integrations.lightning import GradualUnfreezing  # noqa: E402


class Body(fz.Freezable, nn.Module):
    freeze_groups = {"stem": "stem", "stage1": "stage1", "head": "head"}

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5))
        self.stage1 = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage1(self.stem(x)))


class Lit(L.LightningModule):
    def __init__(self, use_param_groups: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = Body().freeze_to("stage1")
        self.use_param_groups = use_param_groups
        self.seen: list[tuple[int, tuple[str, ...], bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, self.net.frozen_groups, self.net.stem[1].training,
                          self.net.stage1[1].training))
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        params = self.net.param_groups(0.05) if self.use_param_groups else self.net.trainable_parameters()
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def _loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=8)


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
    _trainer(callback).fit(lit, _loader(), _loader())

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
    _trainer(GradualUnfreezing({5: "stage1"}), epochs=2).fit(lit, _loader(), _loader())
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
    _trainer(other, epochs=1).fit(lit2, _loader())
    assert other.schedule.milestones == {1: ["stage1"]} and lit2.seen[0][1] == ("stem", "stage1")


def test_callback_errors():
    with pytest.raises(TypeError, match="takes an UnfreezeSchedule or a mapping"):
        GradualUnfreezing(["stage1"])
    with pytest.raises(fz.FreezableError, match="has no model yet"):
        GradualUnfreezing({}).model

    class Plain(Lit):
        def __init__(self):
            super().__init__(use_param_groups=False)
            self.net2 = Body()

    with pytest.raises(fz.FreezableError, match=r"several Freezable submodules: \['net', 'net2'\]"):
        GradualUnfreezing({}).setup(None, Plain(), "fit")
