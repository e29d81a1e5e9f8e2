"""The one set-up of every distributed test: two gloo processes on the CPU and one small model.

:func:`outcome` gives a test what both ranks returned from one scenario. The first call spawns the
2 ranks, once per test session; each rank runs every scenario of :data:`SCENARIOS` (a function of
this module: ``rank -> dict``) in turn and saves what it returned, or the traceback it raised, which
:func:`outcome` turns into that test's failure. Every scenario builds :class:`Body` (the plain
:class:`PlainBody` where a plain module is the point), the model of tests/test_lightning.py too; the
``*_in_place`` scenarios run the same steps on a :class:`PlainBody` made Freezable in place
(:func:`in_place_body`), and ``accelerate_scenario`` trains one through Accelerate's ``prepare``.
"""

from __future__ import annotations

import functools
import os
import tempfile
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import freezable as fz

WORLD = 2
SCENARIOS = ("audit_scenarios", "ddp_scenarios", "ddp_scenarios_in_place", "fsdp_scenarios", "fsdp_scenarios_in_place",
             "accelerate_scenario", "lightning_scenario", "lightning_scenario_in_place")  # Lightning's last


class PlainBody(nn.Module):
    """A stem (BatchNorm, dropout), one stage (BatchNorm) and a head: 6 features in, 3 classes out."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5))
        self.stage1 = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage1(self.stem(x)))


class Body(fz.Freezable, PlainBody):
    freeze_groups = {"stem": "stem", "stage1": "stage1", "head": "head"}


def in_place_body() -> PlainBody:
    """A PlainBody made Freezable in place (its class stays PlainBody), with Body's groups."""
    model = fz.freezable(PlainBody())
    for name in Body.freeze_groups:
        model.register_freeze_group(name, name)
    return model


STEM = [f"stem.{n}" for n, _ in PlainBody().stem.named_parameters()]
FEATURES = STEM + [f"stage1.{n}" for n, _ in PlainBody().stage1.named_parameters()]  # all but the head
HEAD = ["head.weight", "head.bias"]


# -- what the tests read ----------------------------------------------------------------------------


def outcome(scenario: str) -> tuple[dict, ...]:
    """What each rank returned from ``scenario``; the test fails with the scenario's traceback if it raised."""
    per_rank = tuple(r[scenario] for r in _results())
    for rank, res in enumerate(per_rank):
        if "exception" in res:
            pytest.fail(f"{scenario} failed on rank {rank}:\n{res['exception']}")
        if "skipped" in res:
            pytest.skip(res["skipped"])
    return per_rank


@functools.cache
def _results() -> tuple[dict, ...]:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank, args=(str(Path(out) / "store"), out), nprocs=WORLD, join=True)
        return tuple(torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(WORLD))


def _rank(rank: int, store: str, out: str) -> None:
    """Entry point of each spawned rank: every scenario, in order, each ended by a barrier."""
    torch.set_num_threads(1)
    # as torchrun sets them: Lightning then joins this process group instead of spawning its own
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    results: dict = {}
    try:
        for name in SCENARIOS:
            try:
                results[name] = globals()[name](rank)
            except Exception:  # reported by the test, not lost in a child's stderr
                results[name] = {"exception": traceback.format_exc()}
            dist.barrier()
    finally:
        torch.save(results, Path(out) / f"rank{rank}.pt")
        if dist.is_initialized():
            dist.destroy_process_group()


# -- helpers of the scenarios -----------------------------------------------------------------------


def _body(form: str = "mixin") -> Body:
    torch.manual_seed(0)  # the same weights on every rank
    return Body() if form == "mixin" else in_place_body()


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rank + step)  # different data on each rank
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, rank: int, step: int) -> None:
    x, y = _batch(rank, step)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _error_of_step(ddp: nn.Module, opt: torch.optim.Optimizer, rank: int, step: int) -> str | None:
    """The FreezableError a training step raises, as text; None when it trains."""
    try:
        _train_step(ddp, opt, rank, step)
    except fz.FreezableError as e:
        return str(e)
    return None


def _grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, whole (an FSDP2 shard is gathered)."""
    out = {}
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        t = t.detach()
        out[n] = (t.full_tensor() if hasattr(t, "full_tensor") else t).clone()
    return out


def _same_on_every_rank(tensor: torch.Tensor) -> bool:
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.detach().contiguous())
    return all(torch.equal(gathered[0], t) for t in gathered)


# -- scenarios ----------------------------------------------------------------------------------------


def audit_scenarios(rank: int) -> dict:
    """What ``fz.check`` says about DDP, and whether the replicas' weights then agree, in three set-ups.

    ``built_after_freezing``: the right way. ``plain_unfrozen_after_ddp``: a plain module whose stem is
    unfrozen with ``requires_grad_`` after wrapping (nothing stops it; DDP never synchronises it).
    ``freezable_unfrozen_after_ddp``: the same with a Freezable, which refuses to train until the wrapper
    is rebuilt with ``fz.rewrap_ddp``. Each trains 3 steps on its rank's own data.
    """
    out = {}
    for kind in ("built_after_freezing", "plain_unfrozen_after_ddp", "freezable_unfrozen_after_ddp"):
        torch.manual_seed(0)
        net = PlainBody() if kind == "plain_unfrozen_after_ddp" else Body()
        if isinstance(net, Body):
            net.freeze("stem")
        else:
            net.stem.requires_grad_(False)
        ddp = nn.parallel.DistributedDataParallel(net)
        if kind == "plain_unfrozen_after_ddp":
            net.stem.requires_grad_(True)
        elif kind == "freezable_unfrozen_after_ddp":
            net.unfreeze("stem")
        problems = fz.check(ddp).problems
        refused = False
        if kind == "freezable_unfrozen_after_ddp":
            try:
                ddp(_batch(rank, 0)[0])
            except fz.DDPFreezeStateError:
                refused = True
            ddp = fz.rewrap_ddp(ddp)
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
        for step in range(3):
            _train_step(ddp.train(), opt, rank, step)
        out[kind] = {"problems": problems, "refused": refused, "problems_after": fz.check(ddp).problems,
                     "stem_agrees": _same_on_every_rank(net.stem[0].weight),
                     "head_agrees": _same_on_every_rank(net.head.weight)}
    return out


def ddp_scenarios(rank: int, form: str = "mixin") -> dict:
    """DDP around a Body whose freeze state changes after wrapping, step by step (A to E)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    out: dict = {}
    # A: frozen before wrapping, find_unused_parameters=False
    net = _body(form).freeze("stem", "stage1").train()
    out["initial"] = _params(net)
    opt = torch.optim.SGD(net.param_groups(0.1, weight_decay=0.01), momentum=0.9)
    ddp = DDP(net, find_unused_parameters=False)
    for step in range(2):
        _train_step(ddp, opt, rank, step)
    out["A_grads"], out["A_params"] = _grads(net), _params(net)

    # B: unfrozen after wrapping -> a clear error at the next forward, before any gradient
    net.unfreeze("stem", "stage1")
    out["B_error"] = _error_of_step(ddp, opt, rank, 2)

    # C: rewrap -> the newly unfrozen gradients are averaged across ranks
    ddp = fz.rewrap_ddp(ddp)
    for step in range(3, 5):
        _train_step(ddp, opt, rank, step)
    out["C_grads"], out["C_params"] = _grads(net), _params(net)
    out["C_find_unused"] = ddp.find_unused_parameters

    # D: frozen after wrapping -> error; rewrap -> trains, the frozen group stays put
    net.freeze("head")
    out["D_error"] = _error_of_step(ddp, opt, rank, 5)
    ddp = fz.rewrap_ddp(ddp)
    before = _params(net)
    for step in range(6, 8):
        _train_step(ddp, opt, rank, step)
    out["D_before"], out["D_grads"], out["D_params"] = before, _grads(net), _params(net)

    # E: a plain requires_grad_ change on a wrapped model that a freeze call has watched is caught too
    net.head.weight.requires_grad_(True)
    out["E_error"] = _error_of_step(ddp, opt, rank, 8)
    return out


def ddp_scenarios_in_place(rank: int) -> dict:
    return ddp_scenarios(rank, "in_place")


def fsdp_scenarios(rank: int, form: str = "mixin") -> dict:
    """FSDP2 (``fully_shard``) around a Body with its stem and stage frozen, then unfrozen."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    out: dict = {}
    net = _body(form).freeze("stem", "stage1").train()
    out["initial"] = _params(net)
    mesh = init_device_mesh("cpu", (WORLD,))
    for part in (net.stem, net.stage1, net.head, net):
        fully_shard(part, mesh=mesh)
    out["frozen_groups"] = net.frozen_groups
    opt = torch.optim.AdamW(net.param_groups(0.01, weight_decay=0.1))
    for step in range(3):
        _train_step(net, opt, rank, step)
    out["trained"] = _params(net)
    out["bn_training"] = net.stem[1].training, net.stage1[1].training
    # unfreezing a sharded model: FSDP2 reduce-scatters whatever has gradients
    net.unfreeze("stem", "stage1")
    for step in range(3, 5):
        _train_step(net, opt, rank, step)
    out["unfrozen"] = _params(net)
    return out


def fsdp_scenarios_in_place(rank: int) -> dict:
    return fsdp_scenarios(rank, "in_place")


def accelerate_scenario(rank: int) -> dict:
    """An in-place frozen model through Accelerate's ``prepare`` (DDP on the CPU), unfrozen later and rewrapped."""
    try:
        import accelerate
    except ImportError:
        return {"skipped": "needs accelerate"}
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # as torchrun sets it; the process group exists already
    accelerator = accelerate.Accelerator(cpu=True)
    net = _body("in_place").freeze("stem", "stage1")
    out: dict = {"initial": _params(net), "distributed": accelerator.num_processes}
    opt = torch.optim.SGD(net.param_groups(0.1), momentum=0.9)
    model, opt = accelerator.prepare(net, opt)
    out["wrapper"] = type(model).__name__
    for step in range(2):
        x, y = _batch(rank, step)
        opt.zero_grad()
        accelerator.backward(nn.functional.cross_entropy(model.train()(x), y))
        opt.step()
    out["trained"], out["bn_training"] = _params(net), (net.stem[1].training, net.stage1[1].training)
    out["check_ok"] = fz.check(model, opt).ok
    unwrapped = accelerator.unwrap_model(model)
    out["unwrapped"] = (unwrapped is net, type(unwrapped).__name__)
    net.unfreeze("stem", "stage1")  # after prepare: DDP must be rebuilt, as with any DDP
    out["error"] = _error_of_step(model, opt, rank, 2)
    model = fz.rewrap_ddp(model)
    for step in range(3, 5):
        _train_step(model, opt, rank, step)
    out["unfrozen"] = _params(net)
    return out


def lightning_scenario(rank: int, form: str = "mixin") -> dict:
    """Lightning's DDP strategy with GradualUnfreezing, 3 epochs; whether the ranks end with equal weights."""
    try:
        from _lit_models import L, Lit, loader
    except pytest.skip.Exception:  # _lit_models skips without Lightning
        return {"skipped": "needs lightning"}
    from freezable.integrations.lightning import GradualUnfreezing

    lit = Lit(use_param_groups=False, form=form)
    trainer = L.Trainer(
        accelerator="cpu", devices=WORLD, strategy="ddp", max_epochs=3, limit_train_batches=2,
        limit_val_batches=0, callbacks=[GradualUnfreezing({1: "stage1", 2: ["stem"]})],
        enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False,
    )
    trainer.fit(lit, loader())  # each rank gets different batches (DistributedSampler)
    flat = torch.cat([p.detach().flatten() for p in lit.net.parameters()])
    return {"equal": _same_on_every_rank(flat), "seen": lit.seen, "class": type(lit.net).__name__}


def lightning_scenario_in_place(rank: int) -> dict:
    return lightning_scenario(rank, "in_place")
