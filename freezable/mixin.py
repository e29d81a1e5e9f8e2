"""The :class:`Freezable` mixin: named freeze groups whose frozen parts stay frozen.

The freeze state itself (the frozen mark, the hold at inference, the freeze-state
format) lives in :mod:`freezable._state`; this module is the user-facing class on
top of it: groups by name, validation, summaries.
"""

from __future__ import annotations


import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from torch import nn
from torch.nn.parameter import is_lazy

from . import _state
from . import guard as _guard
from ._state import is_frozen, is_held
from .distributed import watch_ddp
from .errors import (
    BuiltFrozenWarning,
    FreezableError,
    FreezableTypeError,
    SpecError,
    UnknownGroupError,
    closest,
    shorten,
    type_error,
    unknown_group,
)
from .groups import Group, Spec, enclosing_part, is_block, is_within, resolve_group, resolve_groups, select
from .norms import has_running_stats, is_norm
from .optim import add_missing, check_nonnegative, check_optimizer, param_groups
from .shared import Shared, shared_parameters
from .stages import units_within, walk_units
from .summary import SummaryRow, count_elements, format_summary

__all__ = ["Freezable", "is_frozen", "is_held", "outermost_freezables", "tied_across_freeze", "warn_built_frozen",
           "watch_swaps"]

_WHOLE_MODEL = Group(modules=("",))


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

    Subclassing:
        Four protected members are the extension points for subclasses and the construction
        path (FrozenBackbone, ``fz.freeze``, presets, ProgressiveFreezing); everything else whose name
        starts with ``_`` is internal.

        * ``_register_groups(groups)`` registers resolved :class:`~freezable.groups.Group` objects
          after the model's own: the one step every registration ends in (class-level groups,
          :meth:`register_freeze_group`, detected groups, a preset's); a name the model has with
          other members is an error.
        * ``_freeze_resolved(groups)`` and ``_unfreeze_resolved(groups)`` freeze and unfreeze resolved
          :class:`~freezable.groups.Group` objects, registered or not (ProgressiveFreezing's staged
          units, FrozenBackbone's ``trainable`` specs).
        * ``_on_freeze_change()`` runs after every change of freeze state, once the frozen
          parts are held; it does nothing by default. Override it (calling ``super()``) to drop
          what a subclass caches from the freeze state (FrozenBackbone's fast path).

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if nn.Module in mro and mro.index(nn.Module) < mro.index(Freezable):
            raise FreezableTypeError(
                f"class {cls.__name__} puts Freezable after nn.Module among its bases, so nn.Module's train() "
                f"would run instead of Freezable's and frozen parts would leave inference mode; put the mixin "
                f"first: class {cls.__name__}(Freezable, {mro[mro.index(Freezable) - 1].__name__})"
            )

    # -- groups -------------------------------------------------------------------------

    def _freeze_root(self) -> nn.Module:
        """The module whose names groups and freeze states refer to."""
        return _state.freeze_root(self)  # type: ignore[arg-type]

    def _registered(self) -> dict[str, Group]:
        """The registered groups (the stored dict), the class-level ones resolved at the first call that needs them."""
        groups = _state.stored_groups(self)  # type: ignore[arg-type]
        return self._register_groups({}) if groups is None else groups

    def _register_groups(self, groups: Mapping[str, Group], *, source: str = "the registration",
                         error: type[FreezableError] = SpecError) -> dict[str, Group]:
        """Registers resolved groups after those the model has: the one step every registration ends in.

        Class-level groups, a registered group, detected groups, a preset's and the in-place form's all come
        here. The class-level groups (``freeze_groups``) resolve and register first, at the first call. A
        name the model has already is left as it is where its members are the same; with other members it
        is an error. Everything is checked before anything is stored.

        Args:
            groups: name -> :class:`~freezable.groups.Group` resolved against the freeze root, in group order.
            source: what defines them, for the message (``"preset 'linear_probe'"``).
            error: the error class for a name the model has with other members.

        Returns:
            The registered groups (the stored dict).

        Raises:
            SpecError: a class-level group or a name is malformed, or (``error``) a name the model has comes
                with other members.
        """
        registered = _state.stored_groups(self)  # type: ignore[arg-type]
        first = registered is None
        if registered is None:
            registered = self._declared()
        for name, group in groups.items():
            _check_group_name(name)
            if name in registered and registered[name] != group:
                raise error(f"{source} defines group {name!r}, which the model already has with other members")
        if first:
            _state.store_groups(self, registered)  # type: ignore[arg-type]
        registered.update((name, group) for name, group in groups.items() if name not in registered)
        return registered

    def _declared(self) -> dict[str, Group]:
        """The class-level groups (``freeze_groups``), checked and resolved against the freeze root."""
        declared = type(self).freeze_groups
        if not isinstance(declared, Mapping):
            raise type_error(f"{type(self).__name__}.freeze_groups", declared,
                             "a mapping of group name to specs", fix="e.g. {'backbone': 'features', 'head': 'fc'}")
        for name in declared:
            _check_group_name(name)
        return resolve_groups(self._freeze_root(), declared)

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
        registered = self._registered()
        _check_group_name(name)
        if name in registered:
            raise SpecError(f"a group named {name!r} is already registered; group names must be unique")
        if not specs:
            raise SpecError(f"register_freeze_group({name!r}) needs at least one spec")
        self._register_groups({name: resolve_group(self._freeze_root(), name, list(specs))})
        return self

    @property
    def freeze_group_map(self) -> Mapping[str, Group]:
        """Every registered group by name, in group order: a read-only view of what the groups hold.

        Each :class:`~freezable.groups.Group` holds names relative to the model (for a FrozenBackbone: its
        backbone). The view follows later registrations.

        Example:
            >>> from torch import nn
            >>> class Net(Freezable, nn.Sequential):
            ...     freeze_groups = {"body": ["0", "1"], "head": "2"}
            >>> groups = Net(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).freeze_group_map
            >>> list(groups), groups["head"]
            (['body', 'head'], Group(modules=('2',), parameters=()))
        """
        return MappingProxyType(self._registered())

    @property
    def freeze_group_names(self) -> tuple[str, ...]:
        """Every registered group, in group order."""
        return tuple(self._registered())

    @property
    def frozen_groups(self) -> tuple[str, ...]:
        """The groups whose every parameter is frozen (without parameters: every module), in group order."""
        root = self._freeze_root()
        return tuple(name for name, group in self._registered().items() if _state.group_is_frozen(root, group))

    def freeze_group(self, name: str) -> Group:
        """The members of the group ``name``: names relative to the model (for a FrozenBackbone: its backbone).

        Read-only: a :class:`~freezable.groups.Group` is a frozen dataclass of names.

        Raises:
            UnknownGroupError: ``name`` is not a registered group.

        Example:
            >>> from torch import nn
            >>> class Net(Freezable, nn.Sequential):
            ...     freeze_groups = {"body": ["0", "1"], "head": "2"}
            >>> Net(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).freeze_group("body")
            Group(modules=('0', '1'), parameters=())
        """
        known = self._registered()
        if not isinstance(name, str):
            raise type_error("a group name", name, "a str")
        if name not in known:
            raise unknown_group(name, known, type(self).__name__)
        return known[name]

    def _selected(self, names: tuple[str, ...], call: str) -> list[Group]:
        """The groups ``names`` name (all checked before any is used); none means the whole model.

        A registered group's name is that group; any other name is a spec (a submodule or parameter name, a
        glob) resolved against the freeze root, as ``trainable=`` reads names (:func:`freezable.groups.select`).
        """
        self._sync()
        if not names:
            return [_WHOLE_MODEL]
        for name in names:
            if not isinstance(name, str):
                raise type_error("a group name", name, "a str", fix="a group name, or a submodule or parameter name")
        selected = select(self._freeze_root(), self._registered(), names, f"{call}()")
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

        Names are read as ``trainable=`` reads them: a registered group's name is that group; any other
        name is a spec matched against the model's submodule and parameter names (``"layer4"``,
        ``"layer4.1"``, ``"blocks.*"``), frozen as a group would be.

        Args:
            *groups: group names, or submodule or parameter names and globs.
            train_bn: keep the groups' normalisation layers trainable (affine
                parameters train, running statistics update), as fastai's ``train_bn``.
            guard: also record a fingerprint of what this call froze (parameters and
                buffers), so that :func:`freezable.check` names any of them that changes
                later (see :mod:`freezable.guard`).

        Returns:
            The model, for chaining.

        Raises:
            UnknownNameError: a name is neither a group nor a submodule or parameter (an
                :class:`~freezable.errors.UnknownGroupError`; the message suggests the closest of both).

        Example:
            >>> from torch import nn
            >>> class Net(Freezable, nn.Sequential):
            ...     freeze_groups = {"body": ["0", "1"], "head": "2"}
            >>> net = Net(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
            >>> net.freeze("0").frozen_groups, net[0].weight.requires_grad  # a module name, as a spec
            ((), False)
        """
        return self._freeze(groups, "freeze", train_bn=train_bn, guard=guard)

    def _freeze(self, groups: tuple[str, ...], call: str, *, train_bn: bool, guard: bool) -> Freezable:
        selected = self._selected(groups, call)
        if not isinstance(train_bn, bool):
            raise type_error("train_bn", train_bn, "a bool")
        if not isinstance(guard, bool):
            raise type_error("guard", guard, "a bool")
        if guard:
            _guard.check_recordable(self, selected)  # type: ignore[arg-type]
        self._freeze_resolved(selected, train_bn=train_bn)
        if guard:
            _guard.record(self, selected)
        return self

    def _freeze_resolved(self, groups: list[Group], *, train_bn: bool = False) -> None:
        _state.note_built_frozen(self)  # type: ignore[arg-type]
        _state.freeze_members(self._freeze_root(), groups, train_bn=train_bn)
        self._refresh_held()

    def unfreeze(
        self, *groups: str, optimizer: Any = None, lr: float | None = None, built_frozen: bool = False
    ) -> Freezable:
        """Unfreezes the named groups, or the whole model when none is named.

        Unfrozen modules return to the model's own current mode. Parameters the model was built
        with frozen (``requires_grad=False`` before freezable first changed anything: torchvision's
        ``trainable_layers``, fixed sin-cos position embeddings) stay frozen unless ``built_frozen=True``;
        naming a group that holds some warns (:class:`~freezable.errors.BuiltFrozenWarning`).

        Args:
            *groups: group names, or submodule or parameter names and globs (see :meth:`freeze`).
            optimizer: an optimizer built from ``trainable_parameters()``: the
                parameters made trainable that it lacks are added to it as one new
                param group (none is duplicated; see :func:`freezable.optim.add_missing`).
            lr: that group's learning rate; default: the optimizer's first group's
                current ``lr`` (the new group copies that group's other settings too).
            built_frozen: also train the groups' parameters the model was built with frozen (from
                then on they are ordinary parameters: later calls freeze and unfreeze them too).

        Returns:
            The model, for chaining.

        Raises:
            UnknownNameError: a name is neither a group nor a submodule or parameter.
            FreezableTypeError: ``optimizer`` is not a ``torch.optim.Optimizer``, ``lr`` is
                not a number >= 0, ``lr`` is given without ``optimizer``, or ``built_frozen`` is not a bool.

        Example:
            >>> from torch import nn
            >>> class Net(Freezable, nn.Sequential):
            ...     freeze_groups = {"body": "0", "head": "1"}
            >>> net = Net(nn.Linear(2, 2), nn.Linear(2, 1))
            >>> net[0].bias.requires_grad_(False)  # built frozen
            Parameter containing:...
            >>> net.freeze().unfreeze().freeze_state()["frozen_parameters"]
            ['0.bias']
            >>> net.unfreeze("body", built_frozen=True).freeze_state()["frozen_parameters"]
            []
        """
        return self._unfreeze(groups, "unfreeze", optimizer=optimizer, lr=lr, built_frozen=built_frozen)

    def _unfreeze(self, groups: tuple[str, ...], call: str, *, optimizer: Any = None, lr: float | None = None,
                  built_frozen: bool = False) -> Freezable:
        selected = self._selected(groups, call)
        if not isinstance(built_frozen, bool):
            raise type_error("built_frozen", built_frozen, "a bool")
        if optimizer is not None:
            check_optimizer(optimizer)
        if lr is not None:
            check_nonnegative(lr, "lr")
            if optimizer is None:
                raise FreezableTypeError("unfreeze(lr=...) sets the learning rate of the group added to optimizer=; "
                                         "pass optimizer= too")
        if built_frozen:
            root = self._freeze_root()
            _state.forget_built_frozen(self, [n for g in selected for n, _ in g.named_parameters(root)])  # type: ignore[arg-type]
        kept = self._unfreeze_resolved(selected)
        if kept and groups:
            warn_built_frozen(f"{call}({', '.join(map(repr, groups))})", kept,
                              f"model.{call}({', '.join(map(repr, groups))}, built_frozen=True)",
                              stacklevel=4 if call == "unfreeze" else 6)  # the user's line, past the context manager
        if optimizer is not None:
            root = self._freeze_root()
            params = [p for group in selected for _, p in group.named_parameters(root)]
            add_missing(optimizer, params, lr=lr, name="unfrozen:" + (",".join(groups) or "all"))
        return self

    def frozen(self, *groups: str, train_bn: bool = False) -> contextlib.AbstractContextManager[Freezable]:
        """Freezes the named groups (none: the whole model) for a ``with`` block, then puts back the freeze
        state from before, exactly, even when the block raises.

        What is put back: which modules are frozen and held at inference, each parameter's
        ``requires_grad``, norm_eval, the parameters counted as built frozen, and the guard's fingerprints.
        Nothing else changes: gradients are still recorded (this is not ``torch.no_grad()``), so a loss that
        flows through a frozen part still trains what lies before it; a gradient the frozen parameters held is
        dropped, as :meth:`freeze` drops it. The names are those :meth:`freeze` takes.

        Args:
            *groups: group names, or submodule or parameter names (see :meth:`freeze`).
            train_bn: keep the groups' norm layers trainable while frozen.

        Returns:
            A context manager; ``with model.frozen(...) as m`` gives the model as ``m``.

        Raises:
            UnknownNameError: a name is neither a group nor a submodule or parameter (on entering the block;
                nothing is changed).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> class GAN(Freezable, nn.Module):
            ...     freeze_groups = {"generator": "g", "critic": "d"}
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.g, self.d = nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 1), nn.Dropout(0.5))
            >>> gan = GAN().train()
            >>> with gan.frozen("critic"):  # the generator's step: the critic computes, at inference, untrained
            ...     gan.d(gan.g(torch.randn(4, 2))).mean().backward()
            ...     gan.frozen_groups, gan.d.training, gan.d[0].weight.grad, gan.g.weight.grad is not None
            (('critic',), False, None, True)
            >>> gan.frozen_groups, gan.d.training  # as before the block
            ((), True)
        """
        return self._for_the_block(lambda: self._freeze(groups, "frozen", train_bn=train_bn, guard=False))

    def unfrozen(self, *groups: str, built_frozen: bool = False) -> contextlib.AbstractContextManager[Freezable]:
        """Unfreezes the named groups (none: the whole model) for a ``with`` block, then puts back the freeze
        state from before, exactly, even when the block raises (see :meth:`frozen` for what is put back).

        Parameters the model was built with frozen stay frozen unless ``built_frozen=True``, as with
        :meth:`unfreeze`. A guarded tensor that the block changed is reported by :func:`freezable.check`
        afterwards: it was frozen before the block and is again.

        Args:
            *groups: group names, or submodule or parameter names (see :meth:`freeze`).
            built_frozen: train the groups' parameters the model was built with frozen too, for the block.

        Returns:
            A context manager; ``with model.unfrozen(...) as m`` gives the model as ``m``.

        Raises:
            UnknownNameError: a name is neither a group nor a submodule or parameter (on entering the block;
                nothing is changed).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> class Net(Freezable, nn.Sequential):
            ...     freeze_groups = {"body": "0", "head": "1"}
            >>> net = Net(nn.Linear(2, 2), nn.Linear(2, 1)).freeze()
            >>> with net.unfrozen("head"):
            ...     net.frozen_groups, [n for n, _ in net.named_trainable_parameters()]
            (('body',), ['1.weight', '1.bias'])
            >>> net.frozen_groups
            ('body', 'head')
        """
        return self._for_the_block(lambda: self._unfreeze(groups, "unfrozen", built_frozen=built_frozen))

    @contextlib.contextmanager
    def _for_the_block(self, change: Callable[[], object]) -> Iterator[Freezable]:
        """Makes ``change`` (which validates before it changes anything), then, when the block ends however it
        ends, puts back the freeze state from before: marks, ``requires_grad``, the record beside them, the guard."""
        self._sync()
        saved = _state.save_state(self), _guard.save(self)  # type: ignore[arg-type]
        change()
        try:
            yield self
        finally:
            _state.restore_state(self, saved[0])  # type: ignore[arg-type]
            _guard.restore(self, saved[1])  # type: ignore[arg-type]
            self._refresh_held()

    def freeze_to(self, group: str, *, train_bn: bool = False) -> Freezable:
        """Freezes the staged groups up to and including ``group`` and unfreezes the staged groups after it.

        fastai's ``freeze_to``, by name: with groups ``stem, stage1, stage2, head``,
        ``freeze_to("stage1")`` freezes ``stem`` and ``stage1`` and unfreezes ``stage2`` and ``head``.
        *Staged* groups are those that contain no other registered group (see
        :func:`freezable.stages.staged_names`): the blocks, where a model has them. ``group`` may
        also be an umbrella over staged groups (a stage that holds blocks, ``backbone``): the cut is
        then after its last staged group. Parts of an umbrella outside every staged group (a final
        norm) go with the umbrella's last staged group (:func:`freezable.stages.walk_units`).

        In a model of several parts, a part's group (``vision_model.block3``: a name after a registered
        group ``vision_model`` that holds it) walks that part alone: the part's groups up to it are
        frozen, the part's groups after it unfrozen, the other parts left as they are (two towers run
        side by side: neither comes "before" the other). Freeze a whole part with ``freeze("vision_model")``.

        Args:
            group: a registered group: a staged one (``block8``) or an umbrella over staged ones (``stage2``).
            train_bn: keep the frozen groups' norm layers trainable.

        Returns:
            The model, for chaining.

        Raises:
            UnknownGroupError: ``group`` is not a registered group, or holds no staged group.

        Example:
            >>> import torchvision
            >>> from freezable import FrozenBackbone
            >>> fb = FrozenBackbone(torchvision.models.resnet18())
            >>> fb.freeze_to("stage2").frozen_groups[:5]
            ('stem', 'stage1', 'stage2', 'block1', 'block2')
            >>> "stage3" in fb.freeze_to("block4").frozen_groups, "block4" in fb.frozen_groups
            (False, True)
            >>> class Towers(Freezable, nn.Module):
            ...     freeze_groups = {"a.stem": "a.0", "a.block1": "a.1", "a": "a", "b.block1": "b.0", "b": "b"}
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.a, self.b = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Sequential(nn.Linear(2, 2))
            >>> Towers().freeze("b").freeze_to("a.stem").frozen_groups  # the walk stays in part a; b stays frozen
            ('a.stem', 'b.block1', 'b')
        """
        self._sync()
        self.freeze_group(group)
        if not isinstance(train_bn, bool):
            raise type_error("train_bn", train_bn, "a bool")
        root = self._freeze_root()
        groups = self._registered()
        units = walk_units(root, groups)
        inside = units_within(root, groups, group, units)
        if not inside:
            raise UnknownGroupError(f"freeze_to({group!r}): the group holds no staged group; "
                                    f"{closest(group, [name for name, _ in units])}")
        part = enclosing_part(group, groups)
        scope = range(len(units)) if part is None else units_within(root, groups, part, units)
        if not set(inside) <= set(scope):
            scope = range(len(units))
        cut = inside[-1]
        self._unfreeze_resolved([g for i in scope if i > cut for g in units[i][1]])
        self._freeze_resolved([g for i in scope if i <= cut for g in units[i][1]], train_bn=train_bn)
        return self

    def param_groups(
        self,
        lr: float,
        *,
        weight_decay: float = 0.0,
        lr_scale: Mapping[str, float] | None = None,
        layer_decay: float | None = None,
    ) -> list[dict[str, Any]]:
        """Optimizer-ready parameter groups, one per freeze group, frozen parameters included.

        Build the optimizer once from them; groups unfrozen later train without
        rebuilding it. ``layer_decay`` gives layer-wise learning-rate decay, as timm's
        ``param_groups_layer_decay``. See :func:`freezable.optim.param_groups`.
        """
        return param_groups(self, lr, weight_decay=weight_decay, lr_scale=lr_scale, layer_decay=layer_decay)

    def set_norm_eval(self, enabled: bool, *groups: str) -> Freezable:
        """Holds the groups' norm layers with running statistics in eval, or releases them (mmdetection's ``norm_eval``).

        Under norm_eval a BatchNorm (any ``_BatchNorm``: SyncBatchNorm, lazy ones, timm's ``BatchNormAct2d``) or
        an InstanceNorm with ``track_running_stats=True`` uses its running statistics and leaves them untouched
        whatever ``train()`` calls follow, on the model, any module containing it, or the layer itself, while its
        affine parameters train when they are not frozen. Separate from freezing: :meth:`unfreeze` keeps it,
        ``set_norm_eval(False)`` clears it. Kept in :meth:`freeze_state`.

        Args:
            enabled: hold (``True``) or release (``False``) the layers.
            *groups: registered group names; none means the whole model.

        Returns:
            The model, for chaining.

        Raises:
            FreezableTypeError: ``enabled`` is not a bool.
            UnknownGroupError: a name is not a registered group.
            FreezableError: the groups hold no norm layer with running statistics (nothing to change).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> class Net(Freezable, nn.Sequential):
            ...     freeze_groups = {"body": ["0", "1"], "head": "2"}
            >>> net = Net(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).set_norm_eval(True).train()
            >>> net[1].training, net[1].weight.requires_grad, net[0].training
            (False, True, True)
            >>> net(torch.randn(1, 4)).shape  # batch 1: statistics not needed in eval
            torch.Size([1, 2])
        """
        if not isinstance(enabled, bool):
            raise type_error("set_norm_eval's enabled", enabled, "a bool", fix="set_norm_eval(True, *groups)")
        selected = self._selected(groups, "set_norm_eval")
        root = self._freeze_root()
        members = _state.norm_eval_members(root, selected)
        if not members:
            where = f"the groups {list(groups)} hold" if groups else f"{type(self).__name__} holds"
            having = [name for name, group in self._registered().items() if _state.norm_eval_members(root, [group])]
            raise FreezableError(
                f"set_norm_eval({', '.join(map(repr, (enabled, *groups)))}) changes nothing: {where} no norm "
                f"layer with running statistics (BatchNorm, InstanceNorm with track_running_stats=True; LayerNorm and "
                f"GroupNorm keep none); groups that do: {shorten(having) or 'none'}"
            )
        for module in members.values():
            _state.set_norm_eval(module, enabled)
        self._refresh_held()
        return self

    def _unfreeze_resolved(self, groups: list[Group]) -> list[str]:
        """Unfreezes resolved groups, registered or not (a subclass extension point: see the class docstring).

        Parameters the model was built with frozen stay frozen.

        Args:
            groups: groups resolved against the freeze root (:func:`freezable.groups.resolve_group`).

        Returns:
            The built-frozen parameters the groups hold, kept frozen (names relative to the freeze root).
        """
        _state.note_built_frozen(self)  # type: ignore[arg-type]
        kept = _state.unfreeze_members(self._freeze_root(), groups, keep=_state.built_frozen(self))  # type: ignore[arg-type]
        _guard.forget(self, groups)
        self._refresh_held()
        return kept

    def _sync(self) -> bool:
        """Gives modules swapped in since the last change the state of their place, and brings the holds up to
        date with what nested Freezables changed since (see :func:`freezable._state.holds_outdated`).

        Returns:
            Whether anything changed (the frozen parts are then held as the state says).
        """
        if _state.reconcile(self) or _state.holds_outdated(self):  # type: ignore[arg-type]
            self._refresh_held()
            return True
        return False

    def _on_freeze_change(self) -> None:
        """Runs after every change of freeze state, the frozen parts already held; does nothing here.

        A subclass extension point (see the class docstring): override it, calling ``super()``, to
        drop what the subclass caches from the freeze state.
        """

    def _refresh_held(self) -> None:
        """Holds at inference exactly the frozen modules whose whole subtree is frozen.

        Every change of freeze state ends here, then :meth:`_on_freeze_change` runs.
        """
        _state.hold_frozen(self)  # type: ignore[arg-type]
        watch_swaps(self, _state.has_frozen_place(self))  # type: ignore[arg-type]
        watch_ddp(self)  # type: ignore[arg-type]
        self._on_freeze_change()

    def train(self, mode: bool = True) -> Freezable:
        """Sets the training mode as ``nn.Module.train`` does, then holds frozen parts at inference.

        Modules swapped in since the last change of freeze state (``convert_sync_batchnorm``,
        ``prepare_qat``) first get the state of their place (see :mod:`freezable._state`).
        """
        super().train(mode)  # type: ignore[misc]
        _state.note_mode(self, mode)  # type: ignore[arg-type]
        if not self._sync():
            _state.rehold(self)  # type: ignore[arg-type]
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

    def freeze_summary(self, blocks: bool = False) -> str:
        """A table of parameters, trainable, frozen and norm layers held in eval, a row per group.

        Block groups (``block1`` ... ``blockN``) get rows with ``blocks=True`` only; parameters outside
        every group get a row ``(no group)``. Parameters frozen outside freezable are not counted as
        ``frozen``: columns ``built frozen`` and ``frozen by hand`` show them where there are any, and
        ``norms not held`` the norm layers among them whose statistics still update in ``train()``.

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
        self._sync()
        root = self._freeze_root()
        groups = self._registered()
        by_freezable = _frozen_by_freezable(root, groups.values())
        built_names = set(_state.built_frozen(self))  # type: ignore[arg-type]
        built = {id(p) for n, p in root.named_parameters() if n in built_names}
        rows = [
            _summary_row(name, group.named_parameters(root), (m for _, m in group.named_modules(root)), by_freezable,
                         built)
            for name, group in groups.items() if blocks or not is_block(name)
        ]
        grouped = {id(p) for group in groups.values() for _, p in group.named_parameters(root)}
        if groups and any(id(p) not in grouped for p in root.parameters()):
            outside = ((n, p) for n, p in root.named_parameters() if id(p) not in grouped)
            rows.append(_summary_row("(no group)", outside, iter(()), by_freezable, built))
        total = _summary_row("total", root.named_parameters(), root.modules(), by_freezable, built)
        norm_eval = [m for m in root.modules() if _state.is_norm_eval(m)]
        training = sum(1 for m in norm_eval if any(p.requires_grad for p in m.parameters()))
        note = (f"\nnorm_eval: {len(norm_eval)} norm layer(s) held in eval, statistics fixed ({training} with "
                f"trainable affine parameters)"
                if norm_eval else "")
        lazy = [n for n, p in root.named_parameters() if is_lazy(p)]
        if lazy:
            note += (f"\nlazy: {len(lazy)} parameter(s) not materialised yet, counted as 0 ({shorten(lazy)}); they "
                     f"keep their group's state when the first forward materialises them")
        return (format_summary(rows, total) + note + "".join(f"\n{line}" for line in self._elsewhere_notes(root))
                + "".join(f"\n{s.describe()}" for s in tied_across_freeze(self)))

    def _elsewhere_notes(self, root: nn.Module) -> list[str]:
        """The summary's lines on what freezable did not freeze: built frozen, frozen by hand, conflicts."""
        built = set(_state.built_frozen(self))  # type: ignore[arg-type]
        by_freezable = _frozen_by_freezable(root, self._registered().values())
        frozen = [n for n, p in root.named_parameters() if not p.requires_grad]
        lines = []
        if built & set(frozen):
            names = [n for n in frozen if n in built]
            lines.append(f"built frozen: {len(names)} parameter(s) the model was built with frozen stay frozen "
                         f"through unfreeze ({shorten(names)}); unfreeze(..., built_frozen=True) trains them")
        by_hand = [n for n, p in root.named_parameters() if not p.requires_grad and n not in built
                   and id(p) not in by_freezable]
        if by_hand:
            lines.append(f"frozen by hand: {len(by_hand)} parameter(s) frozen outside freezable ({shorten(by_hand)}); "
                         f"their modules are not held at inference (norm statistics update in train()): freeze "
                         f"their group instead")
        for name in _state.conflicts(self):  # type: ignore[arg-type]
            lines.append(f"conflict: {name!r} ({type(root.get_submodule(name)).__name__}) was swapped in at a frozen "
                         f"place with trainable parameters; freeze or unfreeze its group to decide")
        return lines

    # -- freeze state -------------------------------------------------------------------

    def freeze_state(self) -> dict[str, Any]:
        """What is frozen, as plain JSON-serialisable data to keep beside a checkpoint.

        Example:
            >>> from torch import nn
            >>> class Net(Freezable, nn.Sequential): ...
            >>> Net(nn.Linear(2, 2), nn.Linear(2, 1)).freeze().unfreeze().freeze_state()["frozen_parameters"]
            []
        """
        self._sync()
        return _state.read_state(self)  # type: ignore[arg-type]

    def load_freeze_state(self, state: Mapping[str, Any]) -> Freezable:
        """Makes exactly the modules and parameters that ``state`` names frozen, and the rest trainable.

        Its ``norm_eval_modules`` are put under norm_eval and the rest released; a state without them
        (version 1, from before norm_eval) leaves norm_eval as it is. Its ``built_frozen_parameters``
        (version 3) become the parameters that ``unfreeze`` keeps frozen.

        Args:
            state: a dict from :meth:`freeze_state`, possibly after a JSON round trip.

        Returns:
            The model, for chaining.

        Raises:
            FreezeStateError: ``state`` is malformed or names what the model lacks.
        """
        self._sync()
        root = self._freeze_root()
        frozen_modules, frozen_params = _state.check_state(root, state)
        norm_eval = _state.check_norm_eval_state(root, state)
        built = _state.check_built_frozen_state(root, state)
        _state.note_built_frozen(self)  # type: ignore[arg-type]
        _state.write_state(root, frozen_modules, frozen_params)
        if norm_eval is not None:
            _state.write_norm_eval(root, norm_eval)
        if built is not None:
            _state.write_built_frozen(self, built)  # type: ignore[arg-type]
        self._refresh_held()
        return self


def _check_group_name(name: object) -> None:
    if not isinstance(name, str):
        raise type_error("a group name", name, "a str")
    if not name or not name.strip():
        raise SpecError(f"a group name must not be empty or blank, got {name!r}")


def outermost_freezables(module: nn.Module) -> list[tuple[str, Freezable]]:
    """``module`` itself if it is a Freezable, else its Freezable submodules that no other holds, by name, in order.

    Example:
        >>> from torch import nn
        >>> class Net(Freezable, nn.Sequential): ...
        >>> [name for name, _ in outermost_freezables(nn.Sequential(Net(Net()), nn.ReLU(), Net()))]
        ['0', '2']
    """
    found: list[tuple[str, Freezable]] = []
    for name, sub in module.named_modules():
        if isinstance(sub, Freezable) and not is_within(name, [f for f, _ in found]):
            found.append((name, sub))
    return found


def tied_across_freeze(model: Freezable) -> list[Shared]:
    """The tensors of ``model`` tied between a frozen and a trainable part (see :mod:`freezable.shared`)."""
    return shared_parameters(_state.freeze_root(model), model.freeze_group_map, is_frozen)


_REGISTRATIONS_SEEN = "_freezable_registrations_seen"  # on a Freezable: the module registration count last synced


def watch_swaps(model: Freezable, watch: bool) -> None:
    """Adds :func:`sync_before_forward` to ``model``'s forward pre-hooks (once) or removes it."""
    hooks = model._forward_pre_hooks  # type: ignore[attr-defined]
    keys = [key for key, hook in hooks.items() if hook is sync_before_forward]
    if watch and not keys:
        model.register_forward_pre_hook(sync_before_forward, prepend=True)  # type: ignore[attr-defined]
    if not watch:
        for key in keys:
            del hooks[key]
        model.__dict__.pop(_REGISTRATIONS_SEEN, None)
        return
    model.__dict__[_REGISTRATIONS_SEEN] = _state.registrations()


def sync_before_forward(model: Freezable, args: Any) -> None:
    """Forward pre-hook of every Freezable: modules swapped in since the last change get their place's state, and
    holds follow what a nested Freezable changed since.

    Costs two integer comparisons unless a module was registered somewhere since (see
    :func:`freezable._state.registrations`) or a hold changed somewhere (:func:`freezable._state.holds_outdated`).
    """
    seen = _state.registrations()
    if model.__dict__.get(_REGISTRATIONS_SEEN) != seen:
        model.__dict__[_REGISTRATIONS_SEEN] = seen
        model._sync()
    elif _state.holds_outdated(model):  # type: ignore[arg-type]
        model._refresh_held()


def warn_built_frozen(call: str, names: list[str], fix: str, stacklevel: int = 3) -> None:
    """The one warning for a call that names parameters the model was built with frozen (they stay frozen)."""
    warnings.warn(f"{call} leaves {len(names)} parameter(s) frozen that the model was built with frozen "
                  f"({shorten(names)}); to train them as well: {fix}", BuiltFrozenWarning, stacklevel=stacklevel)


def _frozen_by_freezable(root: nn.Module, groups: Iterable[Group] = ()) -> set[int]:
    """The frozen parameters whose module carries the frozen mark, and the frozen parameters a group names on their
    own (a ViT's ``cls_token``, whose module the group does not hold): what freezable froze, by id."""
    marked = {id(p) for m in root.modules() if is_frozen(m) for p in m._parameters.values()
              if p is not None and not p.requires_grad}
    loose = {id(p) for group in groups for name in group.parameters
             for p in (root.get_parameter(name),) if not p.requires_grad}
    return marked | loose


def _summary_row(name: str, named_params: Iterator[tuple[str, nn.Parameter]], modules: Iterator[nn.Module],
                 by_freezable: set[int], built: set[int]) -> SummaryRow:
    params = [p for _, p in named_params]
    elsewhere = [p for p in params if not p.requires_grad and id(p) not in by_freezable]
    unique = {id(m): m for m in modules}.values()
    return SummaryRow(
        name=name,
        params=count_elements(params),
        trainable=count_elements(p for p in params if p.requires_grad),
        norms_in_eval=sum(1 for m in unique if is_norm(m) and is_held(m)),
        built_frozen=count_elements(p for p in elsewhere if id(p) in built),
        by_hand=count_elements(p for p in elsewhere if id(p) not in built),
        norms_not_held=sum(1 for m in unique if has_running_stats(m) and not is_held(m) and _all_frozen(m)),
    )


def _all_frozen(module: nn.Module) -> bool:
    """Whether ``module`` has parameters of its own and none of them trains."""
    params = [p for p in module._parameters.values() if p is not None]
    return bool(params) and not any(p.requires_grad for p in params)
