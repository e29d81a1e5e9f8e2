"""Two real gloo processes on the CPU, for tests/test_audit.py: what fz.check's DDP check warns about happens.

Run as a script: ``python tests/ddp_worker.py PORT OUT.json``. Each rank trains on its own data
for three steps, in the set-ups :func:`scenario` describes. Rank 0 writes what fz.check said and
whether the replicas' weights still agree.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import freezable as fz


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.features(x))


class Net(fz.Freezable, Plain):
    freeze_groups = {"features": "features", "head": "head"}


def same_on_every_rank(tensor: torch.Tensor) -> bool:
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.detach().contiguous())
    return all(torch.equal(gathered[0], t) for t in gathered)


def train(ddp: nn.Module, net: nn.Module, rank: int) -> None:
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(100 + rank)  # each rank its own data
    for _ in range(3):
        opt.zero_grad()
        ddp.train()(torch.randn(8, 4)).square().mean().backward()
        opt.step()


def scenario(rank: int, kind: str) -> dict:
    """``built_after_freezing``: the right way. ``plain_unfrozen_after_ddp``: a plain module whose
    features are unfrozen with ``requires_grad_`` after wrapping (nothing stops it; DDP never
    synchronises them). ``freezable_unfrozen_after_ddp``: the same with a Freezable, which refuses to
    train until the wrapper is rebuilt with ``fz.rewrap_ddp``."""
    torch.manual_seed(0)
    net = Plain() if kind == "plain_unfrozen_after_ddp" else Net()
    net.features.requires_grad_(False)
    if isinstance(net, Net):
        net.freeze("features")
    ddp = nn.parallel.DistributedDataParallel(net)
    refused = False
    if kind == "plain_unfrozen_after_ddp":
        net.features.requires_grad_(True)
    elif kind == "freezable_unfrozen_after_ddp":
        net.unfreeze("features")
    problems = fz.check(ddp).problems
    if kind == "freezable_unfrozen_after_ddp":
        try:
            ddp(torch.randn(8, 4))
        except fz.DDPFreezeStateError:
            refused = True
        ddp = fz.rewrap_ddp(ddp)
    train(ddp, net, rank)
    return {"problems": problems, "refused": refused, "problems_after": fz.check(ddp).problems,
            "features_agree": same_on_every_rank(net.features[0].weight),
            "head_agrees": same_on_every_rank(net.head.weight)}


def run(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        kinds = ("built_after_freezing", "plain_unfrozen_after_ddp", "freezable_unfrozen_after_ddp")
        result = {kind: scenario(rank, kind) for kind in kinds}
        if rank == 0:
            with open(out, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2)
