"""A PyTorch Lightning callback for gradual unfreezing: :class:`GradualUnfreezing`.

Importing this module imports Lightning (``lightning.pytorch``, or the older
``pytorch_lightning``); nothing else in freezable does.

Example:
    >>> import lightning as L
    >>> from freezable.integrations.lightning import GradualUnfreezing
    >>> callback = GradualUnfreezing({1: ["stage4"], 2: ["stage3"]})
    >>> trainer = L.Trainer(callbacks=[callback], max_epochs=3, logger=False,
    ...                     enable_checkpointing=False, enable_progress_bar=False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .._state import freeze_root, rehold
from ..distributed import rewrap_ddp
from ..errors import FreezableError, type_error
from ..mixin import Freezable
from ..schedule import UnfreezeSchedule

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the older package name
    import pytorch_lightning as pl  # type: ignore[no-redef]

__all__ = ["GradualUnfreezing"]


def find_freezable(module: nn.Module) -> Freezable:
    """``module`` itself if it is a Freezable, else its one outermost Freezable submodule."""
    if isinstance(module, Freezable):
        return module
    found: list[tuple[str, Freezable]] = []
    for name, sub in module.named_modules():
        if isinstance(sub, Freezable) and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, sub))
    if len(found) != 1:
        what = "no Freezable submodule" if not found else f"several Freezable submodules: {[n for n, _ in found]}"
        raise FreezableError(
            f"GradualUnfreezing needs one Freezable model in {type(module).__name__}, which has {what}; "
            f"pass an UnfreezeSchedule built on the model you mean"
        )
    return found[0][1]


class GradualUnfreezing(pl.Callback):
    """Drives an :class:`~freezable.UnfreezeSchedule` at the start of every training epoch.

    At each ``on_train_epoch_start`` the model gets the freeze state of
    ``trainer.current_epoch``. Its state is saved in Lightning checkpoints, and a run resumed
    from one (``trainer.fit(..., ckpt_path=...)``) continues exactly: the freeze state and, for an
    optimizer built from ``trainable_parameters()``, the optimizer's added groups are restored
    before Lightning loads the optimizer's state. Frozen parts, norm layers included, stay at inference
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
        # state not loaded yet. Give the optimizer the groups it had, so that its saved state loads.
        if self.schedule is not None and self.schedule.last_epoch is not None:
            self._step(trainer, self.schedule.last_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step(trainer, trainer.current_epoch)
        self._hold(pl_module)

    def _step(self, trainer: pl.Trainer, epoch: int) -> None:
        before = self.model.freeze_state()
        optimizer = trainer.optimizers[0] if self.add_to_optimizer and trainer.optimizers else None
        self.schedule.step(epoch, optimizer=optimizer, lr=self.lr)
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
        wrapped = trainer.strategy.model
        if isinstance(wrapped, nn.parallel.DistributedDataParallel):
            trainer.strategy.model = rewrap_ddp(wrapped)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.schedule is None else self.schedule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.schedule is None:
            self._pending_state = dict(state_dict)
        else:
            self.schedule.load_state_dict(state_dict)
