"""The LightningModule of tests/test_lightning.py and of the Lightning scenario in tests/_two_procs.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _two_procs import Body, in_place_body

L = pytest.importorskip("lightning")  # collected as a doctest module too: skipped cleanly without Lightning


class Lit(L.LightningModule):
    def __init__(self, use_param_groups: bool, form: str = "mixin") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = (Body() if form == "mixin" else in_place_body()).freeze_to("stage1")
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
