"""Two real gloo processes on the CPU, for tests/test_audit.py: what fz.check's DDP check warns about happens.

Run as a script: ``python tests/ddp_worker.py PORT OUT.json``. Each rank trains on its own data
for three steps, in two set-ups: DDP built after freezing (the right way) and DDP built while
the features were frozen, then the features unfrozen (DDP never synchronises them). Rank 0
writes what fz.check said and whether the replicas' weights still agree.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import freezable as fz


class Net(fz.Freezable, nn.Module):
    freeze_groups = {"features": "features", "head": "head"}

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.features(x))


def same_on_every_rank(tensor: torch.Tensor) -> bool:
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.detach().contiguous())
    return all(torch.equal(gathered[0], t) for t in gathered)


def scenario(rank: int, unfreeze_after_ddp: bool) -> dict:
    torch.manual_seed(0)
    net = Net().freeze("features")
    ddp = nn.parallel.DistributedDataParallel(net)
    if unfreeze_after_ddp:
        net.unfreeze("features")
    problems = fz.check(ddp).problems
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1)
    torch.manual_seed(100 + rank)  # each rank its own data
    for _ in range(3):
        opt.zero_grad()
        ddp.train()(torch.randn(8, 4)).square().mean().backward()
        opt.step()
    return {"problems": problems, "features_agree": same_on_every_rank(net.features[0].weight),
            "head_agrees": same_on_every_rank(net.head.weight)}


def run(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = {"built_after_freezing": scenario(rank, False), "unfrozen_after_ddp": scenario(rank, True)}
        if rank == 0:
            with open(out, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2)
