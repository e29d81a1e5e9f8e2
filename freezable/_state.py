"""The storage layer under :class:`~freezable.Freezable`: where the freeze state lives.

The one source of truth:

* a parameter is frozen when ``requires_grad`` is ``False``;
* a module is frozen when it carries the frozen mark (a ``__dict__`` entry, so it
  survives ``copy.deepcopy`` and pickling and never enters ``state_dict()``);
* a norm layer with running statistics is under *norm_eval* when it carries the
  norm_eval mark (the same kind of entry), whether its parameters train or not.

Everything else is derived from those three, and they are kept by name: at every change of
freeze state a Freezable records, for every module under its freeze root, whether the place
(the module's name) is frozen, and marks each module it has seen as *placed*. A module
swapped in since (``convert_sync_batchnorm``, ``prepare_qat``, ``fuse_modules``, a layer a
user replaced) carries no placed mark; :func:`reconcile` gives it the state of its place: at a
frozen place, a module whose own parameters are all frozen (the replaced module's Parameter
objects, reused) is frozen like the one it replaced; one with trainable parameters there is a
*conflict*, never silently frozen or trained, that ``fz.check`` and ``freeze_summary()`` name.
The record also keeps the parameters the model was built with frozen (``requires_grad=False``
before freezable first changed anything): :func:`unfreeze_members` leaves them frozen.

Observers and fake-quant modules (``torch.ao.quantization``) held at inference do not observe:
a fake-quant module still fake-quantizes, and their buffers are put back after each forward, so a
frozen part of a QAT model keeps its statistics and quantization parameters as they were. One
that has observed nothing yet (a model prepared for QAT after freezing) observes its first
forward, so that its fake quantization has ranges. A frozen module whose whole subtree is
frozen (every module marked, no trainable parameter), and every module under
norm_eval, is *held at inference*: it is put in eval mode at once, after every
``train()`` call that reaches the model (:func:`rehold`), and, through a forward
pre-hook, before any forward that follows a ``train()`` call on an inner module.
One exception (:func:`follows_train`): a part of a model that exists to serve its
model's training forward (a detector's RPN, RoI heads and input transform) is not held
itself when its parent is not, so a training step still gets its losses and training
proposals; what is frozen inside it is held.

Beside that, a Freezable keeps three bookkeeping entries in its own ``__dict__``:
its registered groups (names only), the child whose names the groups refer to (its
*freeze root*; the model itself by default) and the mode last asked for (its own
``training`` flag reads ``False`` while the model itself is held).

This module knows nothing of the mixin: ``guard``, ``fast``, ``cache``, ``schedule``,
``optim`` and the integrations read the state here or through the mixin's public API.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from .errors import FreezeStateError, closest, describe
from .groups import Group, is_within
from .norms import has_running_stats, is_norm

__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "is_frozen",
    "set_frozen",
    "is_norm_eval",
    "set_norm_eval",
    "norm_eval_members",
    "set_trainable",
    "is_held",
    "runs_frozen",
    "set_held",
    "hold_frozen",
    "hold_changes",
    "holds_outdated",
    "follows_train",
    "rehold",
    "is_placed",
    "record_places",
    "has_frozen_place",
    "swapped_in",
    "registrations",
    "reconcile",
    "conflicts",
    "note_mode",
    "asked_mode",
    "clear_entries",
    "note_built_frozen",
    "built_frozen",
    "forget_built_frozen",
    "freeze_root",
    "set_freeze_root",
    "stored_groups",
    "store_groups",
    "freeze_members",
    "unfreeze_members",
    "group_is_frozen",
    "read_state",
    "check_state",
    "write_state",
    "check_norm_eval_state",
    "write_norm_eval",
    "check_built_frozen_state",
    "write_built_frozen",
    "SavedState",
    "save_state",
    "restore_state",
]

STATE_FORMAT = "freezable.freeze_state"
STATE_VERSION = 3  # 2 adds "norm_eval_modules", 3 "built_frozen_parameters"; older states still load
_LOADABLE_VERSIONS = (1, 2, 3)

_ENTRY_PREFIX = "_freezable_"  # every __dict__ entry freezable keeps, here and in guard and distributed
_FROZEN = "_freezable_frozen"  # on a module: the frozen mark
_NORM_EVAL = "_freezable_norm_eval"  # on a norm layer with running statistics: the norm_eval mark
_GROUPS = "_freezable_groups"  # on a Freezable: group name -> Group
_ROOT = "_freezable_root"  # on a Freezable: name of the child its groups refer to ("" or absent: itself)
_MODE = "_freezable_mode"  # on a Freezable: the mode last asked for
_PLACED = "_freezable_placed"  # on a module: seen by a Freezable's record (absent: swapped in since)
_PLACES = "_freezable_places"  # on a Freezable: module name -> whether that place is frozen
_BUILT_FROZEN = "_freezable_built_frozen"  # on a Freezable: parameters frozen before freezable changed anything


# -- the frozen mark and requires_grad ---------------------------------------------------


def _set_mark(module: nn.Module, mark: str, on: bool) -> None:
    """Sets or clears a mark (a ``__dict__`` entry) of ``module`` alone (not its children)."""
    if on:
        module.__dict__[mark] = True
    else:
        module.__dict__.pop(mark, None)


def is_frozen(module: nn.Module) -> bool:
    """Whether ``module`` carries the frozen mark (set by ``Freezable.freeze``)."""
    return module.__dict__.get(_FROZEN, False)


def set_frozen(module: nn.Module, frozen: bool) -> None:
    """Sets or clears the frozen mark of ``module`` alone (not its children); the module counts as placed."""
    _set_mark(module, _FROZEN, frozen)
    _set_mark(module, _PLACED, True)


def set_trainable(param: nn.Parameter, trainable: bool) -> None:
    """``requires_grad`` as given; a frozen parameter also loses its gradient.

    Set as an attribute, not with ``requires_grad_()``: a lazy module's ``UninitializedParameter``
    refuses every tensor method before its first forward, takes the attribute, and keeps it when it
    is materialised (the same object becomes a ``Parameter``).

    Example:
        >>> layer = nn.LazyLinear(2)
        >>> set_trainable(layer.weight, False)
        >>> _ = layer(torch.randn(1, 3))
        >>> type(layer.weight).__name__, layer.weight.requires_grad
        ('Parameter', False)
    """
    param.requires_grad = trainable
    if not trainable:
        param.grad = None


# -- the norm_eval mark -------------------------------------------------------------------


def is_norm_eval(module: nn.Module) -> bool:
    """Whether ``module`` carries the norm_eval mark (set by ``Freezable.set_norm_eval``)."""
    return module.__dict__.get(_NORM_EVAL, False)


def set_norm_eval(module: nn.Module, enabled: bool) -> None:
    """Sets or clears the norm_eval mark of ``module`` alone (the hold is not updated: call :func:`hold_frozen`)."""
    _set_mark(module, _NORM_EVAL, enabled)


def norm_eval_members(root: nn.Module, groups: Iterable[Group]) -> dict[str, nn.Module]:
    """The groups' norm layers that keep running statistics (what norm_eval holds), by name, once each."""
    found: dict[int, tuple[str, nn.Module]] = {}
    for group in groups:
        for name, module in group.named_modules(root):
            if has_running_stats(module):
                found.setdefault(id(module), (name, module))
    return dict(found.values())


# -- the hold -------------------------------------------------------------------------------


def _hold_at_inference(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of held modules: undo a ``train()`` call made on an inner module.

    A hook released earlier in the same forward (a Freezable's forward pre-hook brought its holds up to date,
    see :func:`holds_outdated`) still runs once, from torch's copy of the hooks: it does nothing then.
    """
    if module.training and is_held(module):
        module.train(False)


# Modules that update buffers in every forward, whatever their mode: (module, class name), read from sys.modules.
_OBSERVERS: tuple[tuple[str, str], ...] = (
    ("torch.ao.quantization.fake_quantize", "FakeQuantizeBase"),
    ("torch.ao.quantization.observer", "ObserverBase"),
)
_SAVED = "_freezable_saved_observer"  # on a held observer, during its forward: what to put back


def _is_observer(module: nn.Module) -> bool:
    return any(isinstance(module, cls) for cls in _classes(_OBSERVERS))


def _classes(names: tuple[tuple[str, str], ...]) -> list[type]:
    found = (getattr(sys.modules.get(module_name), class_name, None) for module_name, class_name in names)
    return [cls for cls in found if isinstance(cls, type)]


def _has_observed(module: nn.Module) -> bool:
    """Whether every observer in ``module`` holds statistics (finite, non-empty ``min_val``/``max_val``)."""
    ranges = [b for name, b in module.named_buffers() if name.rpartition(".")[2] in ("min_val", "max_val")]
    return all(b.numel() and bool(torch.isfinite(b).all()) for b in ranges)


def _observe_nothing(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of held observers: buffers saved to be put back; a fake-quant module stops observing.

    An observer that has observed nothing yet (a model just prepared for QAT) observes this forward,
    so that its fake quantization has ranges; from then on it keeps them.
    """
    if not _has_observed(module):
        return
    module.__dict__[_SAVED] = {name: b.clone() for name, b in module._buffers.items() if b is not None}
    enabled = module._buffers.get("observer_enabled")
    if enabled is not None:
        enabled.zero_()


def _put_back(module: nn.Module, args: Any, output: Any) -> None:
    """Forward hook of held observers: their buffers as before the forward (a fused fake-quant op writes its
    scale and zero point even when it does not observe)."""
    with torch.no_grad():
        for name, value in module.__dict__.pop(_SAVED, {}).items():
            module._buffers[name].resize_(value.shape).copy_(value)


def _hooks_of(module: nn.Module) -> list[tuple[dict, Any]]:
    return [(module._forward_pre_hooks, _hold_at_inference), (module._forward_pre_hooks, _observe_nothing),
            (module._forward_hooks, _put_back)]


def is_held(module: nn.Module) -> bool:
    """Whether ``module`` is held at inference (eval mode) whatever ``train()`` calls follow."""
    return any(hook is _hold_at_inference for hook in module._forward_pre_hooks.values())


def runs_frozen(module: nn.Module) -> bool:
    """Whether ``module`` computes as a frozen part: held at inference, with no trainable parameter in its subtree.

    A norm layer held by ``norm_eval`` whose affine parameters train is held but does not run frozen.
    """
    return is_held(module) and not any(p.requires_grad for p in module.parameters())


_RESET = "reset_running_stats"  # on a held norm layer with running statistics: an instance attribute


def _keep_statistics(module: nn.Module) -> None:
    """``reset_running_stats()`` of a held norm layer: the statistics are kept.

    torch's ``swa_utils.update_bn`` resets every BatchNorm and recomputes the statistics in a training
    forward; a held one computes in eval, so reset statistics (0 and 1) would stay. A lazy layer being
    materialised (its statistics just allocated, still empty) is reset as usual.
    """
    if isinstance(module, LazyModuleMixin):
        type(module).reset_running_stats(module)


def set_held(module: nn.Module, held: bool, mode: bool) -> None:
    """Holds ``module`` at inference, or releases it into ``mode``.

    A held norm layer with running statistics also keeps them through ``reset_running_stats()`` (see
    :func:`_keep_statistics`): an instance attribute, removed on release.
    """
    if held:
        if not is_held(module):
            module.register_forward_pre_hook(_hold_at_inference, prepend=True)
            if _is_observer(module):
                module.register_forward_pre_hook(_observe_nothing)
                module.register_forward_hook(_put_back)
            if has_running_stats(module):
                module.__dict__[_RESET] = functools.partial(_keep_statistics, module)
        module.training = False
    elif is_held(module):
        for hooks, fn in _hooks_of(module):
            for key, hook in list(hooks.items()):
                if hook is fn:
                    del hooks[key]
        reset = module.__dict__.get(_RESET)
        if isinstance(reset, functools.partial) and reset.func is _keep_statistics:
            del module.__dict__[_RESET]
        module.training = mode


def rehold(root: nn.Module) -> None:
    """Puts every held module under ``root`` back in eval mode (after a ``train()`` call or a mode restore)."""
    for module in root.modules():
        if module.training and is_held(module):
            module.training = False


# Parts of a model whose forward returns something else in training (losses, training proposals)
# for their parent's training forward to use: (module, class name). Read from sys.modules, so
# nothing is imported here; a class whose module is not imported has no instance to check.
TRAIN_MODE_PARTS: tuple[tuple[str, str], ...] = (
    ("torchvision.models.detection.rpn", "RegionProposalNetwork"),
    ("torchvision.models.detection.roi_heads", "RoIHeads"),
    ("torchvision.models.detection.transform", "GeneralizedRCNNTransform"),
)


def follows_train(module: nn.Module) -> bool:
    """Whether ``module`` is a part that serves its parent's training forward (see ``TRAIN_MODE_PARTS``).

    Such a part, frozen, is not held at inference itself while its parent is not: its
    own ``training`` flag follows ``train()``/``eval()`` so that it returns what a
    training step expects; the frozen modules inside it are held as usual. Whole
    models that switch their output on ``self.training`` (Inception's aux logits, a
    distilled ViT's two heads) are not listed: frozen whole, they are held, so a frozen
    feature extractor or teacher gives its inference output in a training loop.

    Example:
        >>> import torchvision
        >>> from torch import nn
        >>> follows_train(torchvision.models.detection.rpn.RegionProposalNetwork(
        ...     None, None, 0.7, 0.3, 256, 0.5, {"training": 2000, "testing": 1000},
        ...     {"training": 2000, "testing": 1000}, 0.7))
        True
        >>> follows_train(nn.BatchNorm2d(4))
        False
    """
    return any(isinstance(module, cls) for cls in _classes(TRAIN_MODE_PARTS))


def note_mode(model: nn.Module, mode: bool) -> None:
    """Records the mode ``model.train(mode)`` asked for."""
    model.__dict__[_MODE] = mode


def asked_mode(model: nn.Module) -> bool:
    """The mode last asked for (``model.training`` reads ``False`` while the model itself is held)."""
    return model.__dict__.get(_MODE, model.training) if is_held(model) else model.training


def clear_entries(module: nn.Module) -> None:
    """Drops every entry freezable keeps in ``module``'s ``__dict__`` (all are named ``_freezable_*``)."""
    for key in [k for k in module.__dict__ if k.startswith(_ENTRY_PREFIX)]:
        del module.__dict__[key]


def _holds(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Each module under ``model``'s freeze root, and on the way down to it, with whether it should be held.

    The modules on the way (a FrozenBackbone itself, above its ``backbone``) are held by a Freezable around
    ``model``; they are judged by the same rule, so that a change here releases (or restores) that hold at once.
    """
    root = freeze_root(model)
    above = _above_root(model)
    held: dict[int, bool] = {}

    def visit(module: nn.Module) -> bool:
        if id(module) not in held:
            frozen = is_frozen(module) and not _owns_trainable(module)
            children = [visit(child) for child in module._modules.values() if child is not None]
            held[id(module)] = frozen and all(children)
        return held[id(module)]

    visit(above[0] if above else root)
    modules = above + list(root.modules())  # parents come before their children
    for parent in modules:
        for child in parent._modules.values():
            if child is not None and held[id(child)] and not held[id(parent)] and follows_train(child):
                held[id(child)] = False
    return [(module, held[id(module)] or is_norm_eval(module)) for module in modules]


def _above_root(model: nn.Module) -> list[nn.Module]:
    """``model`` and the modules between it and its freeze root (none when the root is ``model`` itself)."""
    name = model.__dict__.get(_ROOT, "")
    if not name:
        return []
    path = [model]
    for part in name.split(".")[:-1]:
        path.append(path[-1]._modules[part])
    return path


def hold_frozen(model: nn.Module) -> None:
    """Holds at inference exactly the frozen modules under ``model``'s freeze root whose whole subtree is frozen.

    Modules swapped in since the last change first get their place's state (:func:`reconcile`); the
    places are recorded at the end (:func:`record_places`).

    Except the parts that serve their parent's training forward (:func:`follows_train`)
    whose parent is not held: they follow the model's mode, while what is inside them
    stays held. Released modules return to the model's own mode (the one last asked
    for, when the model itself was held). When a hold changes, every other Freezable is
    told (:func:`holds_outdated`): one around this model may hold it, or need to.
    """
    reconcile(model)
    mode = asked_mode(model)
    note_mode(model, mode)
    holds = _holds(model)
    moved = False
    for module, held in holds:
        moved |= held != is_held(module)
        set_held(module, held, mode)
    record_places(model)
    if moved:
        _HOLD_CHANGES[0] += 1
    model.__dict__[_HOLDS_SEEN] = _HOLD_CHANGES[0]
    model.__dict__[_HOLDS_MADE] = [held for _, held in holds]


_HOLD_CHANGES = [0]  # changes of a hold made by hold_frozen anywhere in this process
_HOLDS_SEEN = "_freezable_holds_seen"  # on a Freezable: the count of hold changes its holds were last checked at
_HOLDS_MADE = "_freezable_holds_made"  # on a Freezable: the holds its last hold_frozen made, in _holds' order


def hold_changes() -> int:
    """How many times :func:`hold_frozen` changed a hold in this process: what is held elsewhere moved when it did."""
    return _HOLD_CHANGES[0]


def holds_outdated(model: nn.Module) -> bool:
    """Whether another Freezable changed what is frozen under ``model`` since ``model`` last held its parts.

    A Freezable inside ``model`` (a FrozenBackbone, a model frozen in place) that unfreezes or freezes part of
    itself changes its own holds at once, but cannot reach a hold that ``model`` keeps above it; one around
    ``model`` changes holds inside it that ``model`` derived state from (a fast path). One integer comparison
    while no hold changed anywhere; else the holds are recomputed once and compared with those ``model`` made.
    """
    if model.__dict__.get(_HOLDS_SEEN) == _HOLD_CHANGES[0]:
        return False
    now = [held for _, held in _holds(model)]
    if now != model.__dict__.get(_HOLDS_MADE, [False] * len(now)):  # none made yet: none held
        return True
    model.__dict__[_HOLDS_SEEN] = _HOLD_CHANGES[0]
    return False


# -- bookkeeping on the Freezable -------------------------------------------------------------


def freeze_root(model: nn.Module) -> nn.Module:
    """The module whose names ``model``'s groups and freeze states refer to (``model`` itself by default)."""
    name = model.__dict__.get(_ROOT, "")
    return model.get_submodule(name) if name else model


def set_freeze_root(model: nn.Module, child: str) -> None:
    """Makes ``model``'s groups and freeze states refer to names inside its submodule ``child``."""
    model.__dict__[_ROOT] = child


def stored_groups(model: nn.Module) -> dict[str, Group] | None:
    """``model``'s registered groups (the dict itself), or ``None`` before any is stored."""
    return model.__dict__.get(_GROUPS)


def store_groups(model: nn.Module, groups: dict[str, Group]) -> None:
    """Replaces ``model``'s registered groups."""
    model.__dict__[_GROUPS] = groups


# -- the by-name record: places, swaps, what the model was built with frozen -----------------


def is_placed(module: nn.Module) -> bool:
    """Whether ``module`` was under a Freezable's freeze root at its last change (else: swapped in since)."""
    return module.__dict__.get(_PLACED, False)


def record_places(model: nn.Module) -> None:
    """Records which places (module names) under ``model``'s freeze root are frozen, and places every module.

    Called at the end of every change of freeze state. A module in conflict (see :func:`reconcile`) keeps
    its place frozen and stays unplaced until a freeze or unfreeze decides it.
    """
    root = freeze_root(model)
    old = model.__dict__.get(_PLACES) or {}
    places: dict[str, bool] = {}
    for name, module in root.named_modules():
        if not is_placed(module) and _place_is_frozen(name, old, places) and _owns_trainable(module):
            places[name] = True  # a conflict: stays one
            continue
        places[name] = is_frozen(module)
        module.__dict__[_PLACED] = True
    model.__dict__[_PLACES] = places


def has_frozen_place(model: nn.Module) -> bool:
    """Whether the record of ``model`` (see :func:`record_places`) has any frozen place."""
    return any((model.__dict__.get(_PLACES) or {}).values())


def _place_is_frozen(name: str, old: Mapping[str, bool], new: Mapping[str, bool]) -> bool:
    """Whether the place ``name`` was frozen: as recorded, or (a new name) as its parent place is now."""
    if name in old:
        return old[name]
    return bool(name) and new.get(name.rpartition(".")[0], False)


def _owns_trainable(module: nn.Module) -> bool:
    return any(p is not None and p.requires_grad for p in module._parameters.values())


def swapped_in(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The modules swapped in at a frozen place since the last change and not frozen yet, parents first."""
    old = model.__dict__.get(_PLACES)
    if old is None:
        return
    places: dict[str, bool] = {}
    for name, module in freeze_root(model).named_modules():
        placed = is_placed(module)
        places[name] = old[name] if placed and name in old else _place_is_frozen(name, old, places)
        if not placed and places[name] and not is_frozen(module):
            yield name, module


_REGISTRATIONS = [0]  # modules registered into a parent anywhere in this process, once counting started


def _count_registration(parent: nn.Module, name: str, module: nn.Module | None) -> None:
    _REGISTRATIONS[0] += 1


def registrations() -> int:
    """How many modules were registered into a parent (``add_module``, ``setattr``) in this process so far.

    A cheap sign that a module may have been swapped: the count starts at the first call, through torch's
    global module registration hook (which only counts).
    """
    if not _REGISTRATIONS[1:]:
        nn.modules.module.register_module_module_registration_hook(_count_registration)
        _REGISTRATIONS.append(True)
    return _REGISTRATIONS[0]


def reconcile(model: nn.Module) -> bool:
    """Gives each module swapped in since the last change the freeze state of its place; ``True`` if any changed.

    A module swapped in at a frozen place whose own parameters are all frozen (or that has none: an
    observer, an ``Identity`` left by fusion) is frozen. One with trainable parameters is left as it
    is, a conflict (:func:`conflicts`). :func:`hold_frozen` starts with it.
    """
    adopted = [module for _, module in swapped_in(model) if not _owns_trainable(module)]
    for module in adopted:
        set_frozen(module, True)
    return bool(adopted)


def conflicts(model: nn.Module) -> list[str]:
    """Modules swapped in at a frozen place with trainable parameters of their own: neither frozen nor meant to train."""
    return [name for name, module in swapped_in(model) if _owns_trainable(module)]


def note_built_frozen(model: nn.Module) -> None:
    """Records, the first time only, the parameters of ``model`` frozen before freezable changed anything.

    Parameters frozen by freezable already (a backbone an earlier ``FrozenBackbone`` froze) are not counted.
    """
    if _BUILT_FROZEN in model.__dict__:
        return
    root = freeze_root(model)
    ours = {id(p) for module in root.modules() if is_frozen(module) for p in module.parameters(recurse=False)}
    model.__dict__[_BUILT_FROZEN] = tuple(n for n, p in root.named_parameters()
                                          if not p.requires_grad and id(p) not in ours)


def built_frozen(model: nn.Module) -> tuple[str, ...]:
    """The parameters ``model`` was built with frozen (names relative to its freeze root), in model order."""
    return model.__dict__.get(_BUILT_FROZEN, ())


def forget_built_frozen(model: nn.Module, names: Iterable[str]) -> None:
    """Lets ``unfreeze`` train the named built-frozen parameters from now on."""
    drop = set(names)
    model.__dict__[_BUILT_FROZEN] = tuple(n for n in built_frozen(model) if n not in drop)


# -- a saved freeze state, by object, to put back -----------------------------------------------


@dataclass(frozen=True)
class SavedState:
    """A Freezable's freeze state at one moment, by object: what :func:`restore_state` puts back."""

    modules: tuple[tuple[nn.Module, bool, bool, bool], ...]  # each module: frozen mark, norm_eval mark, placed
    parameters: tuple[tuple[nn.Parameter, bool], ...]  # each parameter: requires_grad
    built_frozen: tuple[str, ...] | None  # the parameters counted as built frozen (None: not recorded yet)
    places: dict[str, bool] | None  # the record of frozen places (see record_places)


def save_state(model: nn.Module) -> SavedState:
    """What is frozen under ``model``'s freeze root now, the bookkeeping beside it included.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> saved = save_state(net)
        >>> set_frozen(net[0], True); set_trainable(net[0].weight, False)
        >>> restore_state(net, saved); is_frozen(net[0]), net[0].weight.requires_grad
        (False, True)
    """
    root = freeze_root(model)
    places = model.__dict__.get(_PLACES)
    return SavedState(
        modules=tuple((m, is_frozen(m), is_norm_eval(m), is_placed(m)) for m in root.modules()),
        parameters=tuple((p, p.requires_grad) for p in root.parameters()),
        built_frozen=model.__dict__.get(_BUILT_FROZEN),
        places=None if places is None else dict(places),
    )


def restore_state(model: nn.Module, saved: SavedState) -> None:
    """Puts back what :func:`save_state` saved (the hold is not updated: call :func:`hold_frozen`).

    A parameter frozen again loses its gradient, as freezing drops it. Modules and parameters added since
    keep what they have now.
    """
    for module, frozen, norm_eval, placed in saved.modules:
        _set_mark(module, _FROZEN, frozen)
        _set_mark(module, _NORM_EVAL, norm_eval)
        _set_mark(module, _PLACED, placed)
    for param, requires_grad in saved.parameters:
        if param.requires_grad != requires_grad:
            set_trainable(param, requires_grad)
    for key, value in ((_BUILT_FROZEN, saved.built_frozen), (_PLACES, saved.places)):
        if value is None:
            model.__dict__.pop(key, None)
        else:
            model.__dict__[key] = value


# -- freezing resolved groups ------------------------------------------------------------------


def freeze_members(root: nn.Module, groups: Iterable[Group], *, train_bn: bool = False) -> None:
    """Marks the groups' modules and freezes their parameters (with ``train_bn``, norm layers stay trainable).

    The hold is not updated: call :func:`hold_frozen` afterwards.
    """
    for group in groups:
        norm_modules = {name for name, m in group.named_modules(root) if train_bn and is_norm(m)}
        for name, module in group.named_modules(root):
            set_frozen(module, not is_within(name, norm_modules))
        for name, param in group.named_parameters(root):
            owner = root.get_submodule(name.rpartition(".")[0])
            set_trainable(param, train_bn and is_norm(owner))


def unfreeze_members(root: nn.Module, groups: Iterable[Group], keep: Iterable[str] = ()) -> list[str]:
    """Clears the groups' module marks and makes their parameters trainable, but those named in ``keep``.

    The hold is not updated. Returns the names kept frozen that the groups hold, in order, once each.
    """
    keep = set(keep)
    kept: dict[str, None] = {}
    for group in groups:
        for _, module in group.named_modules(root):
            set_frozen(module, False)
        for name, param in group.named_parameters(root):
            if name in keep:
                kept[name] = None
            else:
                set_trainable(param, True)
    return list(kept)


def group_is_frozen(root: nn.Module, group: Group) -> bool:
    """Whether every parameter of ``group`` is frozen (a group without parameters: every module)."""
    params = [p for _, p in group.named_parameters(root)]
    if params:
        return not any(p.requires_grad for p in params)
    return all(is_frozen(m) for _, m in group.named_modules(root))


# -- the freeze-state format -------------------------------------------------------------------


def read_state(model: nn.Module) -> dict[str, Any]:
    """What is frozen under ``model``'s freeze root, as plain JSON-serialisable data."""
    root = freeze_root(model)
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "frozen_modules": [name for name, module in root.named_modules() if is_frozen(module)],
        "frozen_parameters": [name for name, param in root.named_parameters() if not param.requires_grad],
        "norm_eval_modules": [name for name, module in root.named_modules() if is_norm_eval(module)],
        "built_frozen_parameters": list(built_frozen(model)),
    }


def _state_names(state: object, key: str, valid: Mapping[str, object]) -> set[str]:
    if not isinstance(state, Mapping):
        raise FreezeStateError(f"a freeze state must be a dict from freeze_state(), not {describe(state)}")
    version = state.get("version")
    if state.get("format", STATE_FORMAT) != STATE_FORMAT or type(version) is not int or version not in _LOADABLE_VERSIONS:
        raise FreezeStateError(
            f"not a freeze state of version {' or '.join(map(str, _LOADABLE_VERSIONS))}: format={state.get('format')!r}, "
            f"version={state.get('version')!r}"
        )
    names = state.get(key)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise FreezeStateError(f"freeze state {key!r} must be a list of names, got {names!r}")
    for name in names:
        if name not in valid:
            raise FreezeStateError(f"freeze state {key!r} names {name!r}, which the model lacks; {closest(name, valid)}")
    return set(names)


def check_state(root: nn.Module, state: object) -> tuple[set[str], set[str]]:
    """The frozen module and parameter names of ``state``, checked against ``root``; changes nothing.

    Raises:
        FreezeStateError: ``state`` is malformed or names what ``root`` lacks.
    """
    modules = _state_names(state, "frozen_modules", dict(root.named_modules()))
    params = _state_names(state, "frozen_parameters", dict(root.named_parameters()))
    return modules, params


def write_state(root: nn.Module, frozen_modules: set[str], frozen_params: set[str]) -> None:
    """Makes exactly the named modules and parameters frozen, the rest trainable (the hold is not updated)."""
    for name, module in root.named_modules():
        set_frozen(module, name in frozen_modules)
    for name, param in root.named_parameters():
        set_trainable(param, name not in frozen_params)


def check_norm_eval_state(root: nn.Module, state: object) -> set[str] | None:
    """The norm_eval module names of ``state`` (checked against ``root``), or ``None`` when it has none to say.

    A state without ``"norm_eval_modules"`` (version 1, or a schedule's target) leaves norm_eval as it is.
    Call after :func:`check_state`, which checks the format.

    Raises:
        FreezeStateError: the names are malformed, name what ``root`` lacks, or a layer without running statistics.
    """
    if not isinstance(state, Mapping) or "norm_eval_modules" not in state:
        return None
    modules = dict(root.named_modules())
    names = _state_names(state, "norm_eval_modules", modules)
    for name in sorted(names):
        if not has_running_stats(modules[name]):
            raise FreezeStateError(
                f"freeze state 'norm_eval_modules' names {name!r} ({type(modules[name]).__name__}), which keeps no "
                f"running statistics; norm_eval holds BatchNorm layers and InstanceNorm with track_running_stats=True"
            )
    return names


def check_built_frozen_state(root: nn.Module, state: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The built-frozen parameter names of ``state`` (checked against ``root``), or ``None`` when it has none to say.

    Call after :func:`check_state`, which checks the format.

    Raises:
        FreezeStateError: the names are malformed, or name what ``root`` lacks.
    """
    if "built_frozen_parameters" not in state:
        return None
    params = dict(root.named_parameters())
    names = _state_names(state, "built_frozen_parameters", params)
    return tuple(n for n in params if n in names)


def write_built_frozen(model: nn.Module, names: tuple[str, ...]) -> None:
    """Makes ``names`` the parameters ``model`` counts as built frozen."""
    model.__dict__[_BUILT_FROZEN] = names


def write_norm_eval(root: nn.Module, names: set[str]) -> None:
    """Marks exactly the named modules norm_eval, and clears the mark elsewhere (the hold is not updated)."""
    for name, module in root.named_modules():
        set_norm_eval(module, name in names)
