"""PyTorch Lightning callbacks: :class:`GradualUnfreezing` and :class:`ProgressiveFreezingCallback`.

Importing this module imports Lightning (``lightning.pytorch``, or the older
``pytorch_lightning``); nothing else in freezable does.

Example:
    >>> import lightning as L
    >>> from freezable.integrations.lightning import GradualUnfreezing
    >>> callback = GradualUnfreezing({1: ["stage4"], 2: ["stage3"]})
    >>> trainer = L.Trainer(callbacks=[callback], max_epochs=3, logger=False,
    ...                     enable_checkpointing=False, enable_progress_bar=False)
    >>> from freezable.integrations.lightning import ProgressiveFreezingCallback
    >>> freezing = ProgressiveFreezingCallback("gradient", window=20, threshold=0.1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._state import freeze_root, rehold
from ..distributed import rewrap_ddp
from ..errors import FreezableError, FreezeStateError, closest, type_error
from ..mixin import Freezable, outermost_freezables
from ..progressive import ProgressiveFreezing, check_options
from ..schedule import UnfreezeSchedule

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the older package name
    import pytorch_lightning as pl  # type: ignore[no-redef]

__all__ = ["GradualUnfreezing", "ProgressiveFreezingCallback"]

_GROUPS_KEY = "optimizer_groups"  # the callback's own entry beside the schedule's state


def find_freezable(module: nn.Module, what: str = "GradualUnfreezing") -> Freezable:
    """``module`` itself if it is a Freezable, else its one outermost Freezable submodule."""
    found = outermost_freezables(module)
    if len(found) != 1:
        found_what = ("no Freezable submodule" if not found
                      else f"several Freezable submodules: {[n for n, _ in found]}")
        raise FreezableError(
            f"{what} needs one Freezable model in {type(module).__name__}, which has {found_what}; "
            f"pass {'an UnfreezeSchedule' if what == 'GradualUnfreezing' else 'a ProgressiveFreezing'} built on the "
            f"model you mean"
        )
    return found[0][1]


class GradualUnfreezing(pl.Callback):
    """Drives an :class:`~freezable.UnfreezeSchedule` at the start of every training epoch.

    At each ``on_train_epoch_start`` the model gets the freeze state of
    ``trainer.current_epoch``. Its state is saved in Lightning checkpoints, and a run resumed
    from one (``trainer.fit(..., ckpt_path=...)``) continues exactly, into a fresh model object or
    the one that saved it: the freeze state is restored and, as Lightning's ``BaseFinetuning``
    does, the first optimizer's param groups are rebuilt from the record the checkpoint holds
    (each group's parameter names) before Lightning loads the optimizer's state, whatever groups
    ``configure_optimizers`` built from the model's current ``trainable_parameters()``.
    Frozen parts, norm layers included, stay at inference
    through Lightning's own ``train()``/``eval()`` calls and mode restores: the callback
    re-holds them before every training batch.

    Optimizer: build it in ``configure_optimizers`` from ``model.param_groups(lr)`` and
    nothing needs adding; if it was built from ``trainable_parameters()``, the parameters a
    milestone makes trainable are added to the first optimizer as one new param group
    (``add_to_optimizer=True``, the default; learning rate ``lr`` or the first group's).
    Under DDP, the wrapper is rebuilt with :func:`freezable.rewrap_ddp` whenever the freeze
    state changes.

    Args:
        schedule: an :class:`~freezable.UnfreezeSchedule`, or its milestones
            (epoch -> group names) for the LightningModule's Freezable model: the module itself
            if it is a Freezable, else its one outermost Freezable submodule.
        add_to_optimizer: add newly trainable parameters the optimizer lacks.
        lr: learning rate of such added groups.

    Raises:
        FreezableError: (at setup) no single Freezable model is found.
    """

    def __init__(
        self,
        schedule: UnfreezeSchedule | Mapping[int, str | Sequence[str]],
        *,
        add_to_optimizer: bool = True,
        lr: float | None = None,
    ) -> None:
        if not isinstance(schedule, (UnfreezeSchedule, Mapping)):
            raise type_error("GradualUnfreezing's schedule", schedule,
                             "an UnfreezeSchedule or a mapping of epochs to groups", fix="e.g. {1: ['stage4']}")
        self._milestones = None if isinstance(schedule, UnfreezeSchedule) else dict(schedule)
        self.schedule = schedule if isinstance(schedule, UnfreezeSchedule) else None
        self.add_to_optimizer = add_to_optimizer
        self.lr = lr
        self._pending_state: dict[str, Any] | None = None
        self._optimizer_groups: list[dict[str, Any]] | None = None  # the first optimizer's groups, by name
        self._restoring = False  # a checkpoint's record waits for the rebuilt optimizer (on_fit_start)

    @property
    def model(self) -> Freezable:
        if self.schedule is None:
            raise FreezableError("GradualUnfreezing has no model yet: it finds it when the Trainer sets up")
        return self.schedule.model

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.schedule is None:
            self.schedule = UnfreezeSchedule(find_freezable(pl_module), self._milestones or {}, lr=self.lr)
        if self._pending_state is not None:
            self.schedule.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resuming from a Lightning checkpoint: the callback state is back, the optimizer is built but its
        # state not loaded yet. Give the optimizer the groups it had, so that its saved state loads: from the
        # record (configure_optimizers saw the model's current freeze state, which on the object that saved
        # the checkpoint is not the initial one), then any the record lacks (checkpoints without one).
        if self._restoring and self._optimizer_groups is not None and self.add_to_optimizer and trainer.optimizers:
            restore_groups(trainer.optimizers[0], pl_module, self._optimizer_groups)
        self._restoring = False
        if self.schedule is not None and self.schedule.last_epoch is not None:
            self._step(trainer, self.schedule.last_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step(trainer, trainer.current_epoch)
        self._hold(pl_module)

    def _step(self, trainer: pl.Trainer, epoch: int) -> None:
        before = self.model.freeze_state()
        optimizer = trainer.optimizers[0] if self.add_to_optimizer and trainer.optimizers else None
        self.schedule.step(epoch, optimizer=optimizer, lr=self.lr)
        if optimizer is not None:
            self._optimizer_groups = record_groups(optimizer, trainer.lightning_module)
        if self.model.freeze_state() != before:
            self._rewrap_ddp(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._hold(pl_module)

    def _hold(self, pl_module: pl.LightningModule) -> None:
        """Puts the held (fully frozen) modules back in eval, whatever mode restore Lightning did."""
        rehold(freeze_root(self.model))

    @staticmethod
    def _rewrap_ddp(trainer: pl.Trainer) -> None:
        rewrap_strategy_ddp(trainer)

    def state_dict(self) -> dict[str, Any]:
        if self.schedule is None:
            return {}
        state = self.schedule.state_dict()
        if self._optimizer_groups is not None:
            state[_GROUPS_KEY] = [dict(g) for g in self._optimizer_groups]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        state = dict(state_dict)
        record = state.pop(_GROUPS_KEY, None)
        if record is not None:
            _check_record(record)
        if self.schedule is None:
            self._pending_state = state
        else:
            self.schedule.load_state_dict(state)
        self._optimizer_groups, self._restoring = record, record is not None


def rewrap_strategy_ddp(trainer: pl.Trainer) -> None:
    """Rebuilds the DDP wrapper of ``trainer``'s strategy, if it has one, for the model's current freeze state."""
    wrapped = trainer.strategy.model
    if isinstance(wrapped, nn.parallel.DistributedDataParallel):
        trainer.strategy.model = rewrap_ddp(wrapped)


class ProgressiveFreezingCallback(pl.Callback):
    """Drives a :class:`~freezable.ProgressiveFreezing` after every optimizer step of a Lightning run.

    The object is built when fitting starts, on the LightningModule's Freezable model (the module itself if it
    is one, else its one outermost Freezable submodule), with the first optimizer, whose state for each frozen
    group is released; for ``"schedule"`` without ``total_steps``, the run's ``trainer.estimated_stepping_batches``.
    Or pass one built already. It steps once per optimizer step (at ``on_train_batch_end`` after
    ``trainer.global_step`` moved, so gradient accumulation counts right; the gradients are still there for
    the gradient rule), rebuilds a DDP wrapper when something froze, re-holds frozen modules before each batch
    (Lightning restores modes by hand), and keeps its state in Lightning checkpoints: a run resumed with
    ``trainer.fit(..., ckpt_path=...)`` gets the freeze state and the rule's state back before training
    goes on. The frozen prefix runs without autograd through the model's own forward; to cache it, run
    the forward of ``training_step`` inside ``callback.freezing.cache_keys(sample_keys)``.

    Args:
        freezing: a :class:`~freezable.ProgressiveFreezing`, or the rule (``"schedule"`` or ``"gradient"``).
        **settings: the ProgressiveFreezing's keyword arguments (``window=20``, ``until="stage3"``, ...), when
            ``freezing`` is a rule.

    Raises:
        FreezableError: an unknown rule or a bad setting (at once), or (when fitting starts) no single Freezable
            model is found.
    """

    def __init__(self, freezing: ProgressiveFreezing | str = "schedule", **settings: Any) -> None:
        if isinstance(freezing, ProgressiveFreezing):
            if settings:
                raise FreezableError(f"settings {sorted(settings)} apply to a rule, not to a ProgressiveFreezing "
                                     f"built already")
            self.freezing: ProgressiveFreezing | None = freezing
        else:
            check_options(freezing, settings)
            self.freezing = None
        self._rule = freezing if isinstance(freezing, str) else None
        self._settings = settings
        self._pending_state: dict[str, Any] | None = None
        self._seen_step: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        if self.freezing is None:
            settings = dict(self._settings)
            if self._rule == "schedule" and settings.get("total_steps") is None:
                settings["total_steps"] = max(1, int(trainer.estimated_stepping_batches))
            settings.setdefault("optimizer", optimizer)
            self.freezing = ProgressiveFreezing(find_freezable(pl_module, "ProgressiveFreezingCallback"),
                                                self._rule, **settings)
        elif self.freezing.optimizer is None:
            self.freezing.optimizer = optimizer
        if self._pending_state is not None:
            self.freezing.load_state_dict(self._pending_state)
            self._pending_state = None
            rewrap_strategy_ddp(trainer)
        self._seen_step = trainer.global_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.freezing is not None:
            rehold(freeze_root(self.freezing.model))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.freezing is None or trainer.global_step == self._seen_step:  # accumulating: no optimizer step yet
            return
        self._seen_step = trainer.global_step
        if self.freezing.step():
            rewrap_strategy_ddp(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.freezing is None else self.freezing.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._pending_state = dict(state_dict)


def record_groups(optimizer: torch.optim.Optimizer, module: nn.Module) -> list[dict[str, Any]] | None:
    """The optimizer's param groups as plain data: each group's ``name`` and parameter names in ``module``.

    ``None`` when the optimizer holds a parameter that ``module`` does not name.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> opt = torch.optim.SGD(net[1].parameters(), lr=0.1)
        >>> _ = opt.add_param_group({"params": net[0].parameters(), "name": "unfrozen@1:stem"})
        >>> record_groups(opt, net)
        [{'name': None, 'params': ['1.weight', '1.bias']}, {'name': 'unfrozen@1:stem', 'params': ['0.weight', '0.bias']}]
    """
    names = {id(p): n for n, p in module.named_parameters()}
    if any(id(p) not in names for g in optimizer.param_groups for p in g["params"]):
        return None
    return [{"name": g.get("name"), "params": [names[id(p)] for p in g["params"]]} for g in optimizer.param_groups]


def restore_groups(optimizer: torch.optim.Optimizer, module: nn.Module, record: list[dict[str, Any]]) -> None:
    """Rebuilds ``optimizer``'s param groups from :func:`record_groups`' record (for a checkpoint's state to load).

    Each rebuilt group takes the first group's hyperparameters (the optimizer's saved state then
    sets every group's own); only a freshly built optimizer, without state, should be rebuilt.

    Raises:
        FreezeStateError: the record names a parameter ``module`` lacks, or the optimizer holds one
            the record lacks (it was not built as in the run that saved the record); nothing is changed.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)  # one group, where the record has two
        >>> restore_groups(opt, net, [{"name": None, "params": ["1.weight", "1.bias"]},
        ...                           {"name": "unfrozen@1:stem", "params": ["0.weight", "0.bias"]}])
        >>> [(g.get("name"), len(g["params"]), g["lr"]) for g in opt.param_groups]
        [(None, 2, 0.1), ('unfrozen@1:stem', 2, 0.1)]
    """
    params = dict(module.named_parameters())
    recorded = [n for g in record for n in g["params"]]
    unknown = [n for n in recorded if n not in params]
    if unknown:
        raise FreezeStateError(
            f"the checkpoint's optimizer groups name parameters the model lacks: {unknown[:5]}; "
            f"{closest(unknown[0], params)}"
        )
    names = {id(p): n for n, p in params.items()}
    known = {id(params[n]) for n in recorded}
    extra = [names.get(id(p), "<unnamed>") for g in optimizer.param_groups for p in g["params"] if id(p) not in known]
    if extra:
        raise FreezeStateError(
            f"the optimizer holds parameters that the checkpoint's optimizer groups lack: {extra[:5]}; "
            f"configure_optimizers must build the optimizer over the same parameters as in the run that saved it"
        )
    hyper = {k: v for k, v in optimizer.param_groups[0].items() if k not in ("params", "name")}
    groups = []
    for g in record:
        group = {**hyper, "params": [params[n] for n in g["params"]]}
        if g["name"] is not None:
            group["name"] = g["name"]
        groups.append(group)
    optimizer.param_groups = groups


def _check_record(record: object) -> None:
    if not (isinstance(record, list) and all(
        isinstance(g, Mapping) and (g.get("name") is None or isinstance(g.get("name"), str))
        and isinstance(g.get("params"), list) and all(isinstance(n, str) for n in g["params"])
        for g in record
    )):
        raise FreezeStateError(f"not a GradualUnfreezing record of optimizer groups: {record!r:.200}")
