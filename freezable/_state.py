"""The storage layer under :class:`~freezable.Freezable`: where the freeze state lives.

The one source of truth:

* a parameter is frozen when ``requires_grad`` is ``False``;
* a module is frozen when it carries the frozen mark (a ``__dict__`` entry, so it
  survives ``copy.deepcopy`` and pickling and never enters ``state_dict()``);
* a norm layer with running statistics is under *norm_eval* when it carries the
  norm_eval mark (the same kind of entry), whether its parameters train or not.

Everything else is derived from those three. A frozen module whose whole subtree is
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

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

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
    "set_held",
    "hold_frozen",
    "follows_train",
    "rehold",
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
]

STATE_FORMAT = "freezable.freeze_state"
STATE_VERSION = 2  # 2 adds "norm_eval_modules"; version 1 states (without it) still load
_LOADABLE_VERSIONS = (1, 2)

_FROZEN = "_freezable_frozen"  # on a module: the frozen mark
_NORM_EVAL = "_freezable_norm_eval"  # on a norm layer with running statistics: the norm_eval mark
_GROUPS = "_freezable_groups"  # on a Freezable: group name -> Group
_ROOT = "_freezable_root"  # on a Freezable: name of the child its groups refer to ("" or absent: itself)
_MODE = "_freezable_mode"  # on a Freezable: the mode last asked for


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
    """Sets or clears the frozen mark of ``module`` alone (not its children)."""
    _set_mark(module, _FROZEN, frozen)


def set_trainable(param: nn.Parameter, trainable: bool) -> None:
    """``requires_grad`` as given; a frozen parameter also loses its gradient."""
    param.requires_grad_(trainable)
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
    """Forward pre-hook of held modules: undo a ``train()`` call made on an inner module."""
    if module.training:
        module.train(False)


def is_held(module: nn.Module) -> bool:
    """Whether ``module`` is held at inference (eval mode) whatever ``train()`` calls follow."""
    return any(hook is _hold_at_inference for hook in module._forward_pre_hooks.values())


def set_held(module: nn.Module, held: bool, mode: bool) -> None:
    """Holds ``module`` at inference, or releases it into ``mode``."""
    if held:
        if not is_held(module):
            module.register_forward_pre_hook(_hold_at_inference, prepend=True)
        module.training = False
    elif is_held(module):
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is _hold_at_inference:
                del module._forward_pre_hooks[key]
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
    for module_name, class_name in TRAIN_MODE_PARTS:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if cls is not None and isinstance(module, cls):
            return True
    return False


def note_mode(model: nn.Module, mode: bool) -> None:
    """Records the mode ``model.train(mode)`` asked for."""
    model.__dict__[_MODE] = mode


def hold_frozen(model: nn.Module) -> None:
    """Holds at inference exactly the frozen modules under ``model``'s freeze root whose whole subtree is frozen.

    Except the parts that serve their parent's training forward (:func:`follows_train`)
    whose parent is not held: they follow the model's mode, while what is inside them
    stays held. Released modules return to the model's own mode (the one last asked
    for, when the model itself was held).
    """
    root = freeze_root(model)
    mode = model.__dict__.get(_MODE, model.training) if is_held(model) else model.training
    note_mode(model, mode)
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
    for parent in root.modules():  # parents come before their children
        for child in parent._modules.values():
            if child is not None and held[id(child)] and not held[id(parent)] and follows_train(child):
                held[id(child)] = False
    for module in root.modules():
        set_held(module, held[id(module)] or is_norm_eval(module), mode)


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


def unfreeze_members(root: nn.Module, groups: Iterable[Group]) -> None:
    """Clears the groups' module marks and makes their parameters trainable (the hold is not updated)."""
    for group in groups:
        for _, module in group.named_modules(root):
            set_frozen(module, False)
        for _, param in group.named_parameters(root):
            set_trainable(param, True)


def group_is_frozen(root: nn.Module, group: Group) -> bool:
    """Whether every parameter of ``group`` is frozen (a group without parameters: every module)."""
    params = [p for _, p in group.named_parameters(root)]
    if params:
        return not any(p.requires_grad for p in params)
    return all(is_frozen(m) for _, m in group.named_modules(root))


# -- the freeze-state format -------------------------------------------------------------------


def read_state(root: nn.Module) -> dict[str, Any]:
    """What is frozen under ``root``, as plain JSON-serialisable data."""
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "frozen_modules": [name for name, module in root.named_modules() if is_frozen(module)],
        "frozen_parameters": [name for name, param in root.named_parameters() if not param.requires_grad],
        "norm_eval_modules": [name for name, module in root.named_modules() if is_norm_eval(module)],
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


def write_norm_eval(root: nn.Module, names: set[str]) -> None:
    """Marks exactly the named modules norm_eval, and clears the mark elsewhere (the hold is not updated)."""
    for name, module in root.named_modules():
        set_norm_eval(module, name in names)
