"""Worker processes for tests/test_distributed.py (importable by spawned children: ``tests`` is on sys.path)."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import freezable as fz


class Net(fz.Freezable, nn.Module):
    freeze_groups = {"features": "features", "classifier": "classifier"}

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _net() -> Net:
    torch.manual_seed(0)  # the same weights on every rank
    return Net()


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rank + step)  # different data on each rank
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def _grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        t = t.detach()
        out[n] = (t.full_tensor() if hasattr(t, "full_tensor") else t).clone()
    return out


def _error_of_step(ddp, opt, rank: int, step: int) -> str | None:
    """The FreezableError a training step raises, as text; None when it trains."""
    try:
        _train_step(ddp, opt, rank, step)
    except fz.FreezableError as e:
        return str(e)
    return None


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, rank: int, step: int) -> None:
    x, y = _batch(rank, step)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def ddp_scenarios(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    out: dict = {}
    # A: frozen before wrapping, find_unused_parameters=False
    net = _net().freeze("features").train()
    out["initial"] = _params(net)
    opt = torch.optim.SGD(net.param_groups(0.1, weight_decay=0.01), momentum=0.9)
    ddp = DDP(net, find_unused_parameters=False)
    for step in range(2):
        _train_step(ddp, opt, rank, step)
    out["A_grads"], out["A_params"] = _grads(net), _params(net)

    # B: unfrozen after wrapping -> a clear error at the next forward, before any gradient
    net.unfreeze("features")
    out["B_error"] = _error_of_step(ddp, opt, rank, 2)

    # C: rewrap -> the newly unfrozen gradients are averaged across ranks
    ddp = fz.rewrap_ddp(ddp)
    for step in range(3, 5):
        _train_step(ddp, opt, rank, step)
    out["C_grads"], out["C_params"] = _grads(net), _params(net)
    out["C_find_unused"] = ddp.find_unused_parameters

    # D: frozen after wrapping -> error; rewrap -> trains, the frozen group stays put
    net.freeze("classifier")
    out["D_error"] = _error_of_step(ddp, opt, rank, 5)
    ddp = fz.rewrap_ddp(ddp)
    before = _params(net)
    for step in range(6, 8):
        _train_step(ddp, opt, rank, step)
    out["D_before"], out["D_grads"], out["D_params"] = before, _grads(net), _params(net)

    # E: a plain requires_grad_ change on a wrapped model that a freeze call has watched is caught too
    net.classifier.weight.requires_grad_(True)
    out["E_error"] = _error_of_step(ddp, opt, rank, 8)
    return out


def fsdp_scenarios(rank: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    out: dict = {}
    net = _net().freeze("features").train()
    out["initial"] = _params(net)
    mesh = init_device_mesh("cpu", (2,))
    fully_shard(net.features, mesh=mesh)
    fully_shard(net.classifier, mesh=mesh)
    fully_shard(net, mesh=mesh)
    out["frozen_groups"] = net.frozen_groups
    opt = torch.optim.AdamW(net.param_groups(0.01, weight_decay=0.1))
    for step in range(3):
        _train_step(net, opt, rank, step)
    out["trained"] = _params(net)
    out["bn_training"] = net.features[1].training
    # unfreezing a sharded model: FSDP2 reduce-scatters whatever has gradients
    net.unfreeze("features")
    for step in range(3, 5):
        _train_step(net, opt, rank, step)
    out["unfrozen"] = _params(net)
    return out


def run(rank: int, world_size: int, store_file: str, out_dir: str, scenarios: list[str]) -> None:
    """Entry point of each spawned rank: runs the named scenarios and saves what they return."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world_size)
    results: dict = {}
    try:
        for name in scenarios:
            fn: Callable[[int], dict] = globals()[name]
            try:
                results[name] = fn(rank)
            except Exception:  # reported by the test, not lost in a child's stderr
                results[name] = {"exception": traceback.format_exc()}
            dist.barrier()
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()
