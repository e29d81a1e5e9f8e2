"""The in-place form: any model made a :class:`~freezable.Freezable` itself, its class and names kept.

Training scripts, optimizer factories and the Hugging Face ``Trainer`` work by the model's
names and class: timm's ``create_optimizer_v2`` reads ``group_matcher()`` against
``named_parameters()``, ``Trainer.save_model`` needs a ``PreTrainedModel``. So instead of
wrapping, :func:`freezable` swaps in a subclass of the model's own class that puts the mixin
first, as ``torch.nn.utils.parametrize`` does: the instance keeps ``isinstance`` with its class,
the class's ``__name__``, ``__module__`` and ``forward`` signature, and every parameter and
state-dict name. :func:`plain` swaps the plain class back.

One subclass per class (cached), named like it. It pickles by reference to the plain class
(``__reduce_ex__``), so ``copy.deepcopy``, ``pickle`` and ``torch.save`` of the whole model work
and load in a fresh process that can import freezable.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

from . import _state
from .distributed import unwatch_ddp
from .errors import FreezableTypeError, type_error
from .mixin import Freezable, watch_swaps
from .plan import carry_out, make_plan
from .presets import Preset

__all__ = ["freezable", "freeze", "plain", "freezable_class"]

M = TypeVar("M", bound=nn.Module)

_CLASSES: dict[type, type] = {}  # plain class -> its Freezable subclass
_BASE = "__freezable_plain_class__"  # on a Freezable subclass made here: the plain class


def _reduce_ex(self: nn.Module, protocol: Any) -> tuple[Any, ...]:
    """Pickles an in-place Freezable as its plain class plus the instance state."""
    return _new_instance, (type(self).__dict__[_BASE],), self.__getstate__()


def _new_instance(plain_class: type) -> Any:
    """An empty instance of ``plain_class``'s Freezable subclass, for unpickling (the state follows)."""
    made = freezable_class(plain_class)
    return made.__new__(made)


def freezable_class(cls: type[nn.Module]) -> type:
    """The subclass of ``cls`` with the mixin first, named like ``cls`` (one per class).

    Example:
        >>> import torchvision
        >>> made = freezable_class(torchvision.models.ResNet)
        >>> made.__name__, made.__module__, issubclass(made, torchvision.models.ResNet)
        ('ResNet', 'torchvision.models.resnet', True)
    """
    if _BASE in cls.__dict__:
        return cls
    made = _CLASSES.get(cls)
    if made is None:
        made = type(cls.__name__, (Freezable, cls), {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "__reduce_ex__": _reduce_ex,
            _BASE: cls,
        })
        _CLASSES[cls] = made
    return made


def freezable(model: M) -> M:
    """Makes ``model`` a :class:`~freezable.Freezable` in place, freezing nothing; returns the same object.

    Its groups are the detected ones (torchvision, timm, Hugging Face and the other known sources).
    A model that is a Freezable already is returned as it is.

    Raises:
        FreezableTypeError: ``model`` is not an ``nn.Module`` instance, or is a TorchScript module or a torch.fx
            ``GraphModule`` (wrap those: ``FrozenBackbone(model)``).

    Example:
        >>> import freezable as fz, torchvision
        >>> net = fz.freezable(torchvision.models.resnet18())
        >>> type(net).__name__, isinstance(net, fz.Freezable), net.frozen_groups
        ('ResNet', True, ())
        >>> fz.freezable(net) is net
        True
    """
    _check_model(model, "fz.freezable")
    if isinstance(model, Freezable):
        return model
    plan = make_plan(model)
    _attach(model)
    model._register_groups(plan.groups, source="detection")  # type: ignore[attr-defined]
    return model


def freeze(
    model: M,
    trainable: object = None,
    preset: str | Preset | None = None,
    norm_eval: bool | None = None,
) -> M:
    """Freezes ``model`` in place as ``FrozenBackbone(model, ...)`` would; returns the same object.

    Same groups, same meaning of ``trainable``, ``preset`` and ``norm_eval`` as the wrapper (see
    :mod:`freezable.plan`); the model keeps its class and names, so it goes into training scripts,
    optimizer factories and the Hugging Face ``Trainer`` as it is. A model that is already a
    Freezable keeps its registered groups.

    Args:
        model: any ``nn.Module``.
        trainable: group names or specs that stay trainable.
        preset: a preset name (or :class:`~freezable.Preset`): its ``frozen`` groups are frozen, less
            ``trainable``. Without it everything but ``trainable`` is frozen.
        norm_eval: hold the body's norm layers with running statistics in eval (mmdetection's
            ``norm_eval``); ``None`` takes the preset's setting.

    Returns:
        ``model``, now a Freezable.

    Raises:
        FreezableTypeError: ``model`` is not an ``nn.Module`` instance, or is a TorchScript module or a torch.fx
            ``GraphModule`` (wrap those: ``FrozenBackbone(model)``).
        PresetError: unknown preset, or one that does not fit.
        SpecError: a ``trainable`` entry is neither a group nor a spec that matches.

    Example:
        >>> import freezable as fz, torch, torchvision
        >>> net = fz.freeze(torchvision.models.resnet18(num_classes=10), trainable=["head"])
        >>> type(net).__name__, net.train().bn1.training, sorted(net.state_dict())[:2]
        ('ResNet', False, ['bn1.bias', 'bn1.num_batches_tracked'])
        >>> [name for name, _ in net.named_trainable_parameters()]
        ['fc.weight', 'fc.bias']
    """
    _check_model(model, "fz.freeze")
    plan = make_plan(model, trainable, preset, norm_eval)
    if not isinstance(model, Freezable):
        _attach(model)
    carry_out(model, plan, "fz.freeze(...)")  # type: ignore[arg-type]
    return model


def plain(model: M) -> M:
    """Returns an in-place Freezable to its own plain class: unfrozen, every mark, hook and hold removed.

    What freezable froze trains again (parameters the model was built with frozen stay frozen); the
    modules follow ``train()``/``eval()`` as in plain PyTorch. Returns the same object.

    Raises:
        FreezableTypeError: ``model`` was not made a Freezable by :func:`freezable` or :func:`freeze`
            (a class of its own that subclasses Freezable, or a ``FrozenBackbone``).

    Example:
        >>> import freezable as fz, torchvision
        >>> net = fz.plain(fz.freeze(torchvision.models.resnet18()))
        >>> type(net) is torchvision.models.ResNet, net.train().bn1.training, len(net.bn1._forward_pre_hooks)
        (True, True, 0)
    """
    if not isinstance(model, Freezable) or _BASE not in type(model).__dict__:
        what = "a Freezable class of its own" if isinstance(model, Freezable) else "not a Freezable"
        raise FreezableTypeError(f"plain() undoes fz.freezable() and fz.freeze(); {type(model).__name__} is {what}")
    model.unfreeze()
    mode = _state.asked_mode(model)
    for module in model.modules():
        _state.set_norm_eval(module, False)
        _state.set_held(module, False, mode)
        _state.clear_entries(module)
    unwatch_ddp(model)
    watch_swaps(model, False)
    model.__class__ = type(model).__dict__[_BASE]
    return model


def _check_model(model: object, call: str) -> None:
    if not isinstance(model, nn.Module):
        raise type_error(f"{call}'s model", model, "an nn.Module instance")
    if isinstance(model, torch.jit.ScriptModule):
        raise FreezableTypeError(f"{call}() cannot change the class of a TorchScript module; freeze the model "
                                 f"before torch.jit.script, or wrap it: FrozenBackbone(model)")
    if isinstance(model, torch.fx.GraphModule) and not isinstance(model, Freezable):
        raise FreezableTypeError(f"{call}() cannot change the class of a torch.fx GraphModule ({type(model).__name__}"
                                 f"): torch.fx generates a class per instance to hold its forward, and copies and "
                                 f"pickles rebuild it; wrap it: FrozenBackbone(model)")


def _attach(model: nn.Module) -> None:
    """Swaps in the model's Freezable subclass; its mode is recorded as the one last asked for."""
    model.__class__ = freezable_class(type(model))
    _state.note_mode(model, model.training)
