"""The :class:`Freezable` mixin: named freeze groups whose frozen parts stay frozen.

Where the freeze state lives (its one source of truth):

* a parameter is frozen when ``requires_grad`` is ``False``;
* a module is frozen when it carries the ``_freezable_frozen`` mark.

Everything else is derived from those two. A frozen module whose whole subtree
is frozen (every module marked, no trainable parameter) is *held at
inference*: it is put in eval mode at once, after every ``train()`` call that
reaches the model, and, through a forward pre-hook, before any forward that
follows a ``train()`` call on an inner module. So BatchNorm statistics do not
drift and dropout stays off, whoever calls ``train()``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from torch import nn

from . import guard as _guard
from .distributed import watch_ddp
from .errors import FreezableTypeError, FreezeStateError, SpecError, UnknownGroupError, closest, describe
from .groups import Group, Spec, resolve_group
from .norms import is_norm
from .optim import add_missing, check_lr, check_optimizer, param_groups
from .schedule import freeze_to
from .shared import Shared, shared_parameters
from .summary import SummaryRow, format_summary

__all__ = ["Freezable", "is_frozen", "is_held", "tied_across_freeze"]

_FROZEN = "_freezable_frozen"
_GROUPS = "_freezable_groups"
_MODE = "_freezable_mode"  # the mode last asked for: the model's own flag reads False while it is held itself
_STATE_FORMAT = "freezable.freeze_state"
_STATE_VERSION = 1
_WHOLE_MODEL = Group(modules=("",))


def _hold_at_inference(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of held modules: undo a ``train()`` call made on an inner module."""
    if module.training:
        module.train(False)


def is_frozen(module: nn.Module) -> bool:
    """Whether ``module`` carries the frozen mark (set by :meth:`Freezable.freeze`)."""
    return module.__dict__.get(_FROZEN, False)


def is_held(module: nn.Module) -> bool:
    """Whether ``module`` is held at inference (eval mode) whatever ``train()`` calls follow."""
    return any(hook is _hold_at_inference for hook in module._forward_pre_hooks.values())


def _set_held(module: nn.Module, held: bool, mode: bool) -> None:
    if held:
        if not is_held(module):
            module.register_forward_pre_hook(_hold_at_inference, prepend=True)
        module.training = False
    elif is_held(module):
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is _hold_at_inference:
                del module._forward_pre_hooks[key]
        module.training = mode


class Freezable:
    """Mixin that gives a module named freeze groups and frozen parts that stay frozen.

    Put it first among the bases: ``class Net(Freezable, nn.Module)``. It takes no
    constructor arguments. Frozen parameters get ``requires_grad=False`` and no
    gradient; frozen parts compute as at inference (BatchNorm running statistics
    used and left untouched, dropout off) whatever ``train()`` calls follow.

    Attributes:
        freeze_groups: class-level groups, an ordered mapping of group name to a
            spec or a list of specs (see :mod:`freezable.groups`). They resolve
            at the first call that needs them.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Net(Freezable, nn.Sequential):
        ...     freeze_groups = {"body": ["0", "1"], "head": "2"}
        >>> net = Net(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        >>> net.freeze("body").train()
        Net(...)
        >>> net.frozen_groups, net[1].training
        (('body',), False)
        >>> sum(p.numel() for p in net.trainable_parameters())
        10
    """

    freeze_groups: ClassVar[Mapping[str, Any]] = {}

    # -- groups -------------------------------------------------------------------------

    def _freeze_root(self) -> nn.Module:
        """The module whose names groups and freeze states refer to."""
        return self  # type: ignore[return-value]

    @property
    def _groups(self) -> dict[str, Group]:
        groups = self.__dict__.get(_GROUPS)
        if groups is None:
            declared = type(self).freeze_groups
            if not isinstance(declared, Mapping):
                raise FreezableTypeError(
                    f"{type(self).__name__}.freeze_groups must be a mapping of group name to specs, "
                    f"not {type(declared).__name__}"
                )
            groups = {}
            for name, specs in declared.items():
                self._check_new_group_name(name, groups)
                groups[name] = resolve_group(self._freeze_root(), name, specs)
            self.__dict__[_GROUPS] = groups
        return groups

    @staticmethod
    def _check_new_group_name(name: object, groups: Mapping[str, Group]) -> None:
        if not isinstance(name, str):
            raise FreezableTypeError(f"a group name must be a str, not {type(name).__name__}: {name!r}")
        if not name or not name.strip():
            raise SpecError(f"a group name must not be empty or blank, got {name!r}")
        if name in groups:
            raise SpecError(f"a group named {name!r} is already registered; group names must be unique")

    def register_freeze_group(self, name: str, *specs: Spec) -> Freezable:
        """Registers a freeze group after the class-level ones.

        Args:
            name: the new group's name.
            *specs: names, globs, ``re.Pattern``s or callables (see :mod:`freezable.groups`).

        Returns:
            The model, for chaining.

        Raises:
            SpecError: ``name`` is taken or blank, no spec is given, or a spec matches nothing.

        Example:
            >>> from torch import nn
            >>> class Net(Freezable, nn.Sequential): ...
            >>> net = Net(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
            >>> net.register_freeze_group("convs", lambda name, m: isinstance(m, nn.Conv2d)).freeze_group_names
            ('convs',)
        """
        groups = self._groups
        self._check_new_group_name(name, groups)
        if not specs:
            raise SpecError(f"register_freeze_group({name!r}) needs at least one spec")
        groups[name] = resolve_group(self._freeze_root(), name, list(specs))
        return self

    def freeze_group(self, name: str) -> Group:
        """The registered group ``name`` (names relative to the freeze root); raises UnknownGroupError."""
        if name not in self._groups:
            raise UnknownGroupError(f"unknown freeze group {name!r}; {closest(name, self._groups)}")
        return self._groups[name]

    @property
    def freeze_group_names(self) -> tuple[str, ...]:
        """Every registered group, in group order."""
        return tuple(self._groups)

    @property
    def frozen_groups(self) -> tuple[str, ...]:
        """The groups whose every parameter is frozen (without parameters: every module), in group order."""
        root = self._freeze_root()
        return tuple(name for name, group in self._groups.items() if _group_is_frozen(root, group))

    def _selected(self, groups: tuple[str, ...]) -> list[Group]:
        """The named groups (validated all before any is used); none means the whole model."""
        if not groups:
            return [_WHOLE_MODEL]
        known = self._groups
        for name in groups:
            if not isinstance(name, str):
                raise FreezableTypeError(f"a group name must be a str, not {type(name).__name__}: {name!r}")
            if name not in known:
                raise UnknownGroupError(f"unknown freeze group {name!r}; {closest(name, known)}")
        selected = [known[name] for name in groups]
        root = self._freeze_root()
        for group in selected:  # a member replaced since registration fails here, before anything changes
            list(group.named_modules(root))
            list(group.named_parameters(root))
        return selected

    # -- freezing -----------------------------------------------------------------------

    def freeze(self, *groups: str, train_bn: bool = False, guard: bool = False) -> Freezable:
        """Freezes the named groups, or the whole model when none is named.

        Frozen parameters get ``requires_grad=False`` and ``grad=None``; frozen parts
        are held at inference at once. Where groups overlap, the later call wins.

        Args:
            *groups: registered group names.
            train_bn: keep the groups' normalisation layers trainable (affine
                parameters train, running statistics update), as fastai's ``train_bn``.
            guard: also record a fingerprint of what this call froze (parameters and
                buffers), so that :func:`freezable.check` names any of them that changes
                later (see :mod:`freezable.guard`).

        Returns:
            The model, for chaining.

        Raises:
            UnknownGroupError: a name is not a registered group.
        """
        selected = self._selected(groups)
        if not isinstance(train_bn, bool):
            raise FreezableTypeError(f"train_bn must be a bool, not {type(train_bn).__name__}: {train_bn!r}")
        if not isinstance(guard, bool):
            raise FreezableTypeError(f"guard must be a bool, not {type(guard).__name__}: {guard!r}")
        self._freeze_resolved(selected, train_bn=train_bn)
        if guard:
            _guard.record(self, selected)
        return self

    def _freeze_resolved(self, groups: list[Group], *, train_bn: bool = False) -> None:
        root = self._freeze_root()
        for group in groups:
            norm_modules = {name for name, m in group.named_modules(root) if train_bn and is_norm(m)}
            for name, module in group.named_modules(root):
                _mark(module, not _is_within_any(name, norm_modules))
            for name, param in group.named_parameters(root):
                owner = root.get_submodule(name.rpartition(".")[0])
                _set_trainable(param, train_bn and is_norm(owner))
        self._refresh_held()

    def unfreeze(self, *groups: str, optimizer: Any = None, lr: float | None = None) -> Freezable:
        """Unfreezes the named groups, or the whole model when none is named.

        Unfrozen modules return to the model's own current mode.

        Args:
            *groups: registered group names.
            optimizer: an optimizer built from ``trainable_parameters()``: the
                parameters made trainable that it lacks are added to it as one new
                param group (none is duplicated; see :func:`freezable.optim.add_missing`).
            lr: that group's learning rate; default: the optimizer's first group's
                current ``lr`` (the new group copies that group's other settings too).

        Returns:
            The model, for chaining.

        Raises:
            UnknownGroupError: a name is not a registered group.
            FreezableTypeError: ``optimizer`` is not a ``torch.optim.Optimizer``, ``lr`` is
                not a number >= 0, or ``lr`` is given without ``optimizer``.
        """
        selected = self._selected(groups)
        if optimizer is not None:
            check_optimizer(optimizer)
        if lr is not None:
            check_lr(lr)
            if optimizer is None:
                raise FreezableTypeError("unfreeze(lr=...) sets the learning rate of the group added to optimizer=; "
                                         "pass optimizer= too")
        self._unfreeze_resolved(selected)
        if optimizer is not None:
            root = self._freeze_root()
            params = [p for group in selected for _, p in group.named_parameters(root)]
            add_missing(optimizer, params, lr=lr, name="unfrozen:" + (",".join(groups) or "all"))
        return self

    def freeze_to(self, group: str, *, train_bn: bool = False) -> Freezable:
        """Freezes the staged groups up to and including ``group``, unfreezes the staged groups after it.

        See :func:`freezable.schedule.freeze_to` (fastai's ``freeze_to``, by group name).
        """
        return freeze_to(self, group, train_bn=train_bn)

    def param_groups(
        self, lr: float, *, weight_decay: float = 0.0, lr_scale: Mapping[str, float] | None = None
    ) -> list[dict[str, Any]]:
        """Optimizer-ready parameter groups, one per freeze group, frozen parameters included.

        Build the optimizer once from them; groups unfrozen later train without
        rebuilding it. See :func:`freezable.optim.param_groups`.
        """
        return param_groups(self, lr, weight_decay=weight_decay, lr_scale=lr_scale)

    def _unfreeze_resolved(self, groups: list[Group]) -> None:
        root = self._freeze_root()
        for group in groups:
            for _, module in group.named_modules(root):
                _mark(module, False)
            for _, param in group.named_parameters(root):
                _set_trainable(param, True)
        _guard.forget(self, groups)
        self._refresh_held()

    def _refresh_held(self) -> None:
        """Holds at inference exactly the frozen modules whose whole subtree is frozen."""
        root = self._freeze_root()
        # the model's own flag, unless a hold of the model itself hides it (then: the mode last asked for)
        mode = self.__dict__.get(_MODE, self.training) if is_held(self) else self.training  # type: ignore[arg-type]
        self.__dict__[_MODE] = mode
        held: dict[int, bool] = {}

        def visit(module: nn.Module) -> bool:
            if id(module) not in held:
                frozen = is_frozen(module) and not any(
                    p is not None and p.requires_grad for p in module._parameters.values()
                )
                children = [visit(child) for child in module._modules.values() if child is not None]
                held[id(module)] = frozen and all(children)
            return held[id(module)]

        visit(root)
        for module in root.modules():
            _set_held(module, held[id(module)], mode)
        watch_ddp(self)  # type: ignore[arg-type]

    def train(self, mode: bool = True) -> Freezable:
        """Sets the training mode as ``nn.Module.train`` does, then holds frozen parts at inference."""
        super().train(mode)  # type: ignore[misc]
        self.__dict__[_MODE] = mode
        for module in self._freeze_root().modules():
            if is_held(module):
                module.training = False
        return self

    # -- reading ------------------------------------------------------------------------

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` for every parameter with ``requires_grad=True``."""
        for name, param in self.named_parameters():  # type: ignore[attr-defined]
            if param.requires_grad:
                yield name, param

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter with ``requires_grad=True``: what an optimizer should get."""
        for _, param in self.named_trainable_parameters():
            yield param

    def freeze_summary(self) -> str:
        """A table of parameters, trainable, frozen and norm layers held in eval, a row per group.

        Example:
            >>> from torch import nn
            >>> class Net(Freezable, nn.Sequential):
            ...     freeze_groups = {"body": ["0", "1"], "head": "2"}
            >>> print(Net(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).freeze("body").freeze_summary())
            group  params  trainable  frozen  norms in eval
            -----  ------  ---------  ------  -------------
            body       28          0      28              1
            head       10         10       0              0
            -----  ------  ---------  ------  -------------
            total      38         10      28              1
            trainable: 10 of 38 parameters (26.32%)
        """
        root = self._freeze_root()
        rows = [
            _summary_row(name, group.named_parameters(root), (m for _, m in group.named_modules(root)))
            for name, group in self._groups.items()
        ]
        total = _summary_row("total", root.named_parameters(), root.modules())
        return format_summary(rows, total) + "".join(f"\n{s.describe()}" for s in tied_across_freeze(self))

    # -- freeze state -------------------------------------------------------------------

    def freeze_state(self) -> dict[str, Any]:
        """What is frozen, as plain JSON-serialisable data to keep beside a checkpoint.

        Example:
            >>> from torch import nn
            >>> class Net(Freezable, nn.Sequential): ...
            >>> Net(nn.Linear(2, 2), nn.Linear(2, 1)).freeze().unfreeze().freeze_state()["frozen_parameters"]
            []
        """
        root = self._freeze_root()
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "frozen_modules": [name for name, module in root.named_modules() if is_frozen(module)],
            "frozen_parameters": [name for name, param in root.named_parameters() if not param.requires_grad],
        }

    def load_freeze_state(self, state: Mapping[str, Any]) -> Freezable:
        """Makes exactly the modules and parameters that ``state`` names frozen, and the rest trainable.

        Args:
            state: a dict from :meth:`freeze_state`, possibly after a JSON round trip.

        Returns:
            The model, for chaining.

        Raises:
            FreezeStateError: ``state`` is malformed or names what the model lacks.
        """
        root = self._freeze_root()
        modules = dict(root.named_modules())
        params = dict(root.named_parameters())
        frozen_modules = _state_names(state, "frozen_modules", modules)
        frozen_params = _state_names(state, "frozen_parameters", params)
        for name, module in modules.items():
            _mark(module, name in frozen_modules)
        for name, param in params.items():
            _set_trainable(param, name not in frozen_params)
        self._refresh_held()
        return self


def tied_across_freeze(model: Freezable) -> list[Shared]:
    """The tensors of ``model`` tied between a frozen and a trainable part (see :mod:`freezable.shared`)."""
    return shared_parameters(model._freeze_root(), model._groups, is_frozen)


def _mark(module: nn.Module, frozen: bool) -> None:
    if frozen:
        module.__dict__[_FROZEN] = True
    else:
        module.__dict__.pop(_FROZEN, None)


def _set_trainable(param: nn.Parameter, trainable: bool) -> None:
    param.requires_grad_(trainable)
    if not trainable:
        param.grad = None


def _is_within_any(name: str, ancestors: set[str]) -> bool:
    return any(a == "" or name == a or name.startswith(a + ".") for a in ancestors)


def _group_is_frozen(root: nn.Module, group: Group) -> bool:
    params = [p for _, p in group.named_parameters(root)]
    if params:
        return not any(p.requires_grad for p in params)
    return all(is_frozen(m) for _, m in group.named_modules(root))


def _summary_row(name: str, named_params: Iterator[tuple[str, nn.Parameter]], modules: Iterator[nn.Module]) -> SummaryRow:
    params = [p for _, p in named_params]
    return SummaryRow(
        name=name,
        params=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        norms_in_eval=sum(1 for m in {id(m): m for m in modules}.values() if is_norm(m) and is_held(m)),
    )


def _state_names(state: object, key: str, valid: Mapping[str, object]) -> set[str]:
    if not isinstance(state, Mapping):
        raise FreezeStateError(f"a freeze state must be a dict from freeze_state(), not {describe(state)}")
    version = state.get("version")
    if state.get("format", _STATE_FORMAT) != _STATE_FORMAT or type(version) is not int or version != _STATE_VERSION:
        raise FreezeStateError(
            f"not a freeze state of version {_STATE_VERSION}: format={state.get('format')!r}, "
            f"version={state.get('version')!r}"
        )
    names = state.get(key)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise FreezeStateError(f"freeze state {key!r} must be a list of names, got {names!r}")
    for name in names:
        if name not in valid:
            raise FreezeStateError(f"freeze state {key!r} names {name!r}, which the model lacks; {closest(name, valid)}")
    return set(names)
