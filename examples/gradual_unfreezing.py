"""Gradual unfreezing with checkpoints: stop, resume, and get exactly the uninterrupted run.

A small CNN (stem, two stages, head) fine-tunes on synthetic data. The optimizer is built once from
``model.param_groups`` (discriminative learning rates, frozen groups included), a OneCycle LR scheduler
runs over all steps, and an ``UnfreezeSchedule`` unfreezes a stage per epoch, top down. Each epoch ends
with a checkpoint holding the model, optimizer, LR scheduler, freeze state, schedule state and RNG state,
saved with ``torch.save`` and loadable with ``torch.load(..., weights_only=True)``.

``main()`` trains once without a break, then again with a stop after ``stop_after`` epochs and a resume
from that checkpoint in a fresh model, and checks that both runs end bit-identical.

    python examples/gradual_unfreezing.py
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import torch
from torch import nn

import freezable as fz

MILESTONES = {1: ["stage2"], 2: ["stage1"], 3: ["stem"]}  # epoch -> groups unfrozen when it starts


def block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallNet(fz.Freezable, nn.Module):
    freeze_groups = {"stem": "stem", "stage1": "stage1", "stage2": "stage2", "head": "head"}

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = block(3, 8)
        self.stage1 = nn.Sequential(block(8, 16), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(block(16, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(self.stem(x))))


def make_data(n: int = 64, image_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, image_size, image_size, generator=g), torch.randint(0, 4, (n,), generator=g)


def build(epochs: int, steps_per_epoch: int):
    """Model (in its initial freeze state), optimizer, LR scheduler and unfreezing schedule."""
    torch.manual_seed(0)
    model = SmallNet()  # in real use: load pretrained weights here
    model.freeze_to("stage2")  # only the head trains at first
    optimizer = torch.optim.AdamW(model.param_groups(3e-3, weight_decay=0.01, lr_scale={"stem": 0.1, "stage1": 0.3}))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=epochs * steps_per_epoch)
    schedule = fz.UnfreezeSchedule(model, MILESTONES)
    return model, optimizer, scheduler, schedule


def train(
    epochs: int = 4,
    batch_size: int = 16,
    stop_after: int | None = None,
    resume: Path | None = None,
    checkpoint_dir: Path | None = None,
) -> dict:
    """Trains for ``epochs`` (or until ``stop_after``), optionally resuming from the checkpoint ``resume``."""
    images, labels = make_data()
    steps_per_epoch = len(images) // batch_size
    model, optimizer, scheduler, schedule = build(epochs, steps_per_epoch)
    start, losses = 0, []
    if resume is not None:
        ckpt = torch.load(resume, weights_only=True)
        model.load_state_dict(ckpt["model"])
        model.load_freeze_state(ckpt["freeze_state"])
        optimizer.load_state_dict(ckpt["optimizer"])  # same groups as saved: param_groups lists frozen ones too
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        schedule.load_state_dict(ckpt["schedule"])
        torch.set_rng_state(ckpt["rng"])
        start, losses = ckpt["epoch"], list(ckpt["losses"])
    frozen_by_epoch = {}
    model.train()
    for epoch in range(start, epochs if stop_after is None else stop_after):
        schedule.step(epoch)  # the freeze state of this epoch, whether resumed or not
        frozen_by_epoch[epoch] = model.frozen_groups
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(epoch))
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        print(f"epoch {epoch}: frozen {list(model.frozen_groups)}, loss {losses[-1]:.4f}")
        if checkpoint_dir is not None:
            torch.save({
                "model": model.state_dict(),
                "freeze_state": model.freeze_state(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": torch.get_rng_state(),
                "epoch": epoch + 1,
                "losses": losses,
            }, checkpoint_dir / f"epoch{epoch + 1}.pt")
    return {"model": model, "optimizer": optimizer, "losses": losses, "frozen_by_epoch": frozen_by_epoch}


def fingerprint(model: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """A hash of every weight, buffer and optimizer state tensor."""
    h = hashlib.sha256()
    tensors = list(model.state_dict().values())
    tensors += [t for s in optimizer.state_dict()["state"].values() for t in s.values() if torch.is_tensor(t)]
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(epochs: int = 4, stop_after: int = 2) -> dict:
    print("uninterrupted run")
    full = train(epochs)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"interrupted run: stop after epoch {stop_after - 1}, then resume in a fresh model")
        train(epochs, stop_after=stop_after, checkpoint_dir=Path(tmp))
        resumed = train(epochs, resume=Path(tmp) / f"epoch{stop_after}.pt", checkpoint_dir=Path(tmp))
    same = (fingerprint(full["model"], full["optimizer"]) == fingerprint(resumed["model"], resumed["optimizer"])
            and full["losses"] == resumed["losses"])
    print(full["model"].freeze_summary())
    print(f"resumed run bit-identical to the uninterrupted one: {same}")
    return {
        "resumed_equals_uninterrupted": same,
        "frozen_by_epoch": full["frozen_by_epoch"],
        "resumed_frozen_by_epoch": resumed["frozen_by_epoch"],
        "losses": full["losses"],
    }


if __name__ == "__main__":
    main()
