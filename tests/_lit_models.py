"""LightningModules for tests/test_lightning.py (importable by processes that Lightning spawns)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import freezable as fz

L = pytest.importorskip("lightning")  # collected as a doctest module too: skipped cleanly without Lightning


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


def loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=8)


class SyncCheckLit(Lit):
    """Saves, at the end of training, whether both ranks hold identical parameters, and what each saw."""

    def __init__(self, out_dir: str) -> None:
        super().__init__(use_param_groups=False)
        self.out_dir = out_dir

    def on_train_end(self) -> None:
        flat = torch.cat([p.detach().flatten() for p in self.net.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(self.trainer.world_size)]
        torch.distributed.all_gather(gathered, flat)
        torch.save({"equal": all(torch.equal(gathered[0], g) for g in gathered), "seen": self.seen},
                   f"{self.out_dir}/rank{self.global_rank}.pt")
