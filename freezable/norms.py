"""Which modules are normalisation layers, and which of them keep running statistics."""

from __future__ import annotations

import functools

from torch import nn

__all__ = ["is_norm", "has_running_stats"]


@functools.cache
def _norm_types() -> tuple[type[nn.Module], ...]:
    types: list[type[nn.Module]] = [
        nn.modules.batchnorm._BatchNorm,  # BatchNorm1d/2d/3d, SyncBatchNorm, lazy ones, timm BatchNormAct2d
        nn.modules.instancenorm._InstanceNorm,
        nn.GroupNorm,
        nn.LayerNorm,
    ]
    if hasattr(nn, "RMSNorm"):  # torch >= 2.4
        types.append(nn.RMSNorm)
    try:  # timm's norms that do not subclass torch's
        from timm.layers import norm as timm_norm

        types += [getattr(timm_norm, name) for name in ("RmsNorm", "RmsNorm2d", "SimpleNorm", "SimpleNorm2d")
                  if hasattr(timm_norm, name)]
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    return tuple(types)


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (what ``train_bn=True`` keeps trainable).

    Example:
        >>> is_norm(nn.BatchNorm2d(4)), is_norm(nn.LayerNorm(4)), is_norm(nn.Linear(4, 4))
        (True, True, False)
    """
    return isinstance(module, _norm_types())


def has_running_stats(module: nn.Module) -> bool:
    """Whether ``module`` updates running statistics in training mode.

    Example:
        >>> has_running_stats(nn.BatchNorm1d(4)), has_running_stats(nn.InstanceNorm2d(4))
        (True, False)
        >>> has_running_stats(nn.InstanceNorm2d(4, track_running_stats=True))
        True
    """
    return isinstance(module, nn.modules.batchnorm._NormBase) and bool(module.track_running_stats)
