"""Lightning's finetuning-callback tests, ported to freezable.

Source: Lightning-AI/pytorch-lightning, tests/tests_pytorch/callbacks/test_finetuning_callback.py.
``BackboneFinetuning(unfreeze_backbone_at_epoch=k)`` / a ``BaseFinetuning`` subclass ->
``GradualUnfreezing({k: [groups]})`` on a Freezable LightningModule; ``BaseFinetuning.freeze`` /
``make_trainable`` / ``unfreeze_and_add_param_group`` -> ``freeze`` / ``unfreeze`` / ``unfreeze(optimizer=, lr=)``.

Deliberate differences: Lightning's ``freeze(train_bn=False)`` sets ``track_running_stats=False``; freezable holds
the frozen BatchNorm in eval (running statistics used and kept). Lightning's added group defaults to the first
group's lr / ``initial_denom_lr`` (10) and ``BackboneFinetuning`` ramps it; freezable's added group takes the
first group's lr or ``lr=`` (ramps are an LR scheduler's job). Lightning warns when unfreezing parameters the
optimizer already holds; freezable skips them silently. ``test_unsupported_strategies`` (DeepSpeed) has no
counterpart. Trainers run 1-2 batches per epoch, on CPU, without logger or progress bar.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import freezable as fz

L = pytest.importorskip("lightning")
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset  # noqa: E402

from freezable.integrations.lightning import GradualUnfreezing  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:Found .* module.*in eval mode", "ignore:.*does not have many workers", "ignore:.*LeafSpec.*is deprecated",
    "ignore:The number of training batches", "ignore:.*smaller than the logging interval",
)


def _trainer(tmp_path, callbacks, max_epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, callbacks=callbacks, max_epochs=max_epochs, limit_train_batches=1,
                     limit_val_batches=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


class FinetuningBoringModel(fz.Freezable, BoringModel):
    """test_finetuning_callback.py::FinetuningBoringModel: four Linear layers, the optimizer over the trainable ones."""

    freeze_groups = {f"layer{i}": f"layer.{i}" for i in range(4)}

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 2))

    def configure_optimizers(self):
        return torch.optim.SGD(self.trainable_parameters(), lr=0.1)  # Lightning: filter(requires_grad)


def test_callbacks_restore(tmp_path):
    """test_finetuning_callback.py::test_callbacks_restore: ``freeze(layer[:3])``, ``layer[epoch - 1]`` unfrozen
    from epoch 1 with lr 0.01, two param groups recorded by name, then the SAME model object resumed."""
    chk = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    model = FinetuningBoringModel().freeze("layer0", "layer1", "layer2")
    callback = GradualUnfreezing({1: "layer0", 2: "layer1"}, lr=0.01)
    _trainer(tmp_path, [callback, chk], max_epochs=2).fit(model)

    record = callback.state_dict()["optimizer_groups"]
    assert len(record) == 2  # only 2 param groups
    assert record[0]["params"] == ["layer.3.weight", "layer.3.bias"]  # original parameters
    assert record[1]["params"] == ["layer.0.weight", "layer.0.bias"]  # new param group
    trainer = _trainer(tmp_path, [callback, chk], max_epochs=3)
    trainer.fit(model, ckpt_path=chk.last_model_path)  # on main before issue 16: "different number of groups"
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [0.1, 0.01, 0.01]


def test_callbacks_restore_backbone(tmp_path):
    """test_finetuning_callback.py::test_callbacks_restore_backbone: a FRESH model resumed from the checkpoint."""

    class BackboneBoringModel(fz.Freezable, BoringModel):
        freeze_groups = {"backbone": "backbone", "layer": "layer"}

        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(32, 2)
            self.backbone = nn.Linear(32, 32)
            self.freeze("backbone")  # BackboneFinetuning.freeze_before_training

        def forward(self, x):
            return self.layer(self.backbone(x))

        def configure_optimizers(self):
            return torch.optim.SGD(self.trainable_parameters(), lr=0.1)

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(tmp_path, [ckpt, GradualUnfreezing({1: "backbone"})], max_epochs=2).fit(BackboneBoringModel())
    trainer = _trainer(tmp_path, [GradualUnfreezing({1: "backbone"})], max_epochs=3)
    resumed = BackboneBoringModel()
    trainer.fit(resumed, ckpt_path=ckpt.last_model_path)
    assert resumed.frozen_groups == () and len(trainer.optimizers[0].param_groups) == 2


def test_finetuning_callback(tmp_path):
    """test_finetuning_callback.py::test_finetuning_callback: the backbone (Linear, BatchNorm1d, ReLU) unfreezes at
    epoch 3 and joins the optimizer; the frozen BatchNorm keeps its statistics until then."""

    class Model(fz.Freezable, BoringModel):
        freeze_groups = {"backbone": "backbone", "layer": "layer"}

        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(32, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU())
            self.layer = nn.Linear(32, 2)
            self.freeze("backbone")
            self.seen: list[tuple[int, bool]] = []

        def forward(self, x):
            if self.training:
                self.seen.append((self.current_epoch, self.backbone[1].training))
            return self.layer(self.backbone(x))

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.layer.parameters(), lr=0.1)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)]

        def train_dataloader(self):
            return torch.utils.data.DataLoader(RandomDataset(32, 64), batch_size=2)

    L.seed_everything(42)
    model = Model()
    stats = model.backbone[1].running_mean.clone()
    trainer = _trainer(tmp_path, [GradualUnfreezing({3: "backbone"})], max_epochs=4, num_sanity_val_steps=0)
    trainer.fit(model)
    trained = {e: mode for e, mode in model.seen}
    assert trained[0] is False and trained[3] is True  # held in eval while frozen, training once unfrozen
    assert not torch.equal(model.backbone[1].running_mean, stats)  # it trained at epoch 3
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(groups[0]["lr"])  # no BackboneFinetuning ramp


def test_finetuning_callback_warning(tmp_path):
    """test_finetuning_callback.py::test_finetuning_callback_warning: unfreezing parameters the optimizer already
    has (built from ``self.parameters()``) adds nothing (Lightning also warns), and the checkpoint resumes in a
    Trainer without the callback."""

    class Model(fz.Freezable, BoringModel):
        freeze_groups = {"backbone": "backbone"}

        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Linear(32, 2, bias=False)
            self.layer = None

        def forward(self, x):
            return self.backbone(x)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    chk = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    model = Model()
    model.validation_step = None
    trainer = _trainer(tmp_path, [GradualUnfreezing({0: "backbone"}), chk], max_epochs=2)
    trainer.fit(model)
    assert len(trainer.optimizers[0].param_groups) == 1
    _trainer(tmp_path, [], max_epochs=3).fit(model, ckpt_path=chk.last_model_path)


def test_freeze_unfreeze_function():
    """test_finetuning_callback.py::test_freeze_unfreeze_function."""

    class FreezeModel(fz.Freezable, nn.Module):
        freeze_groups = {"backbone": "backbone", "first": "backbone.0", "bn_and_last": ["backbone.1", "backbone.3"]}

        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))

    model = FreezeModel().train()
    bn = model.backbone[1]
    model.freeze(train_bn=True)
    assert not model.backbone[0].weight.requires_grad
    assert bn.weight.requires_grad and bn.training  # Lightning: track_running_stats stays True
    assert not model.backbone[3].weight.requires_grad

    model.freeze(train_bn=False)
    assert not model.backbone[0].weight.requires_grad
    assert not bn.weight.requires_grad
    assert not bn.training  # Lightning: track_running_stats = False; freezable: held in eval
    assert not model.backbone[3].weight.requires_grad

    model.unfreeze()  # Lightning: make_trainable
    assert all(p.requires_grad for p in model.parameters()) and bn.training

    model.freeze("first")
    assert not model.backbone[0].weight.requires_grad

    model.freeze("bn_and_last", train_bn=True)
    assert bn.weight.requires_grad and bn.training
    assert not model.backbone[3].weight.requires_grad


def test_unfreeze_and_add_param_group_function():
    """test_finetuning_callback.py::test_unfreeze_and_add_param_group_function (``train_bn=False`` part: Lightning
    makes the BatchNorm trainable but leaves it out of the group; freezable has no such split)."""

    class FreezeModel(fz.Freezable, nn.Module):
        freeze_groups = {f"l{i}": f"backbone.{i}" for i in range(6)}

        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(*[nn.Linear(32, 32, bias=False) for _ in range(5)], nn.BatchNorm1d(32))

    model = FreezeModel()
    optimizer = torch.optim.SGD(model.backbone[0].parameters(), lr=0.01)
    model.unfreeze("l0", optimizer=optimizer)  # already there: nothing added (Lightning warns)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == 0.01

    model.freeze("l1")
    model.unfreeze("l1", optimizer=optimizer, lr=0.001)  # Lightning's default: 0.01 / initial_denom_lr
    assert len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["lr"] == 0.001
    assert optimizer.param_groups[1]["params"][0] is model.backbone[1].weight
    assert model.backbone[1].weight.requires_grad

    model.freeze("l2", "l3", "l4")
    model.unfreeze("l2", "l3", "l4", optimizer=optimizer, lr=100)
    assert len(optimizer.param_groups) == 3 and optimizer.param_groups[2]["lr"] == 100
    assert optimizer.param_groups[2]["params"] == [model.backbone[i].weight for i in (2, 3, 4)]


def test_base_finetuning_internal_optimizer_metadata(tmp_path):
    """test_finetuning_callback.py::test_base_finetuning_internal_optimizer_metadata: ``layer[epoch + 1]``
    unfrozen every epoch; the record names each group's parameters. (Lightning's second half, an IndexError
    from its callback indexing past the last layer on resume, has no freezable counterpart.)"""

    class FreezeModel(fz.Freezable, BoringModel):
        freeze_groups = {f"l{i}": f"layer.{i}" for i in range(6)}

        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Sequential(
                nn.Linear(32, 32, bias=False), nn.Linear(32, 32, bias=True), nn.Linear(32, 32, bias=False),
                nn.Linear(32, 32, bias=True), nn.Linear(32, 32, bias=False), nn.Linear(32, 2, bias=True),
            )
            self.freeze("l1", "l2", "l3", "l4", "l5")  # Lightning: freeze(pl_module.layer); layer[0] in the optimizer

        def forward(self, x):
            return self.layer(x)

        def configure_optimizers(self):
            return torch.optim.SGD(self.layer[0].parameters(), lr=0.1)

    cb = GradualUnfreezing({e: f"l{e + 1}" for e in range(5)})
    _trainer(tmp_path, [cb], max_epochs=5).fit(FreezeModel())
    record = cb.state_dict()["optimizer_groups"]
    assert len(record) == 6
    assert [g["params"] for g in record] == [
        ["layer.0.weight"], ["layer.1.weight", "layer.1.bias"], ["layer.2.weight"],
        ["layer.3.weight", "layer.3.bias"], ["layer.4.weight"], ["layer.5.weight", "layer.5.bias"],
    ]


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3)
        self.act = nn.ReLU()
        self.bn = nn.BatchNorm2d(out_channels)


class ConvBlockParam(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.module_dict = nn.ModuleDict({"conv": nn.Conv2d(in_channels, out_channels, 3), "act": nn.ReLU()})
        self.parent_param = nn.Parameter(torch.zeros((1), dtype=torch.float))
        self.bn = nn.BatchNorm2d(out_channels)


def test_complex_nested_model():
    """test_finetuning_callback.py::test_complex_nested_model: a parameter held by a non-leaf module freezes with
    its group (Lightning's ``flatten_modules`` count of 10 is internal to it and not ported)."""

    class Model(fz.Freezable, nn.Sequential):
        freeze_groups = {"encoder": "encoder", "decoder": "decoder"}

    model = Model(OrderedDict([
        ("encoder", nn.Sequential(ConvBlockParam(3, 64), ConvBlock(64, 128))),
        ("decoder", ConvBlock(128, 10)),
    ]))
    model.freeze("encoder", train_bn=True)
    assert not model.encoder[0].module_dict["conv"].weight.requires_grad
    assert not model.encoder[0].parent_param.requires_grad
    assert model.encoder[0].bn.weight.requires_grad

    model.unfreeze()
    encoder_params = [p for n, p in model.named_trainable_parameters() if n.startswith("encoder.")]
    assert len(encoder_params) == 9
