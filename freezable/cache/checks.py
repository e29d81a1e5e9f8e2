"""What a :class:`~freezable.FeatureCache` refuses: a backbone that trains, or whose output for a sample could vary.

A cached output must equal a fresh one. It would not if a parameter trained, if a BatchNorm kept no running
statistics (a sample's output would depend on the rest of its batch), or if a module whose output differs in
training (dropout, drop-path, norms with running statistics) ran in training mode. The frozen prefix of a
progressive freezing run asks the same before it caches (:mod:`freezable.progressive.prefix`), and checks
the cap it will give its cache as the cache does (:func:`check_cap`).
"""

from __future__ import annotations

from torch import nn

from .._state import is_held
from ..errors import FreezableError, shorten, type_error

__all__ = ["check_cap", "check_frozen", "check_cacheable"]

_STOCHASTIC_NAMES = ("DropPath", "StochasticDepth", "DropBlock2d")  # timm, torchvision: random in training


def check_cap(what: str, cap: object) -> None:
    """Raises unless ``cap`` is a memory cap a cache takes: a positive int, or ``None`` (no limit).

    Raises:
        FreezableTypeError: not an int (a bool neither) nor ``None``.
        FreezableError: an int below 1.

    Example:
        >>> check_cap("max_items", 0)
        Traceback (most recent call last):
        ...
        freezable.errors.FreezableError: max_items must be a positive int or None, not 0
    """
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)):
        raise type_error(what, cap, "a positive int or None")
    if cap is not None and cap < 1:
        raise FreezableError(f"{what} must be a positive int or None, not {cap!r}")


def check_frozen(backbone: nn.Module) -> None:
    """Raises :class:`~freezable.FreezableError` unless every parameter of ``backbone`` is frozen (what a cache needs)."""
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    if trainable:
        raise FreezableError(f"FeatureCache needs a fully frozen backbone, but {len(trainable)} parameters "
                             f"train: {shorten(trainable)}; freeze them (fz.FrozenBackbone(model)) or don't cache")


def check_cacheable(backbone: nn.Module) -> None:
    """Raises :class:`~freezable.FreezableError` unless ``backbone`` is frozen and a sample's output cannot vary.

    Example:
        >>> check_cacheable(nn.Sequential(nn.Linear(2, 2), nn.Dropout()).requires_grad_(False).eval())
        >>> check_cacheable(nn.Sequential(nn.Linear(2, 2), nn.Dropout()).requires_grad_(False))
        Traceback (most recent call last):
        ...
        freezable.errors.FreezableError: FeatureCache refuses a backbone whose outputs vary: '1' (Dropout) is in training mode; ...
    """
    check_frozen(backbone)
    _check_deterministic(backbone)


def _check_deterministic(backbone: nn.Module) -> None:
    """Raises :class:`~freezable.FreezableError` when a sample's output of ``backbone`` could vary between calls.

    A BatchNorm without running statistics (the output depends on the rest of the batch), or a module
    whose output differs in training (dropout, drop-path, norms with statistics) left in training mode.
    """
    for name, module in backbone.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
            raise FreezableError(
                f"FeatureCache refuses a backbone whose outputs vary: {name!r} ({type(module).__name__}) keeps "
                "no running statistics, so a sample's output depends on the rest of its batch"
            )
        if module.training and not is_held(module) and _differs_in_training(module):
            raise FreezableError(
                f"FeatureCache refuses a backbone whose outputs vary: {name or 'the backbone'!r} "
                f"({type(module).__name__}) is in training mode; freeze it with fz.FrozenBackbone "
                "(held in eval) or call .eval()"
            )


def _differs_in_training(module: nn.Module) -> bool:
    if isinstance(module, (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)):
        return True
    if isinstance(module, nn.modules.batchnorm._NormBase):  # BatchNorm kinds, InstanceNorm with statistics
        return module.track_running_stats or isinstance(module, nn.modules.batchnorm._BatchNorm)
    return type(module).__name__ in _STOCHASTIC_NAMES
