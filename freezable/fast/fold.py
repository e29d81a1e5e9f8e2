"""Folding BatchNorm into the convolution before it, for frozen parts that run at inference.

A BatchNorm layer at inference is an affine map per channel,
``y = (x - mean) / sqrt(var + eps) * weight + bias``, so when it reads a convolution's
output it can be folded into that convolution's weight and bias. The folded pair computes
the same function (up to float rounding) with one kernel instead of two.

Only layers whose forward is known are folded: convolutions of the plain ``nn.Conv1d/2d/3d``
types (and timm's ``Conv2dSame``, which only pads differently), BatchNorm of the plain
``nn.BatchNorm1d/2d/3d`` types that keep running statistics, and timm's ``BatchNormAct2d``,
whose dropout and activation are kept after the folded convolution. Nothing here changes
the modules it is given: folding returns new modules whose new tensors are computed in
float64 and stored in the convolution's dtype.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["can_fold", "fold_conv_bn", "norm_remainder"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_NAMES = ("Conv2dSame",)  # timm: same weights, different padding
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NORM_ACT_NAMES = ("BatchNormAct2d",)  # timm: batch_norm, then self.drop, then self.act


def _is_norm_act(bn: nn.Module) -> bool:
    return type(bn).__name__ in _NORM_ACT_NAMES and isinstance(bn, nn.BatchNorm2d) and hasattr(bn, "act")


def can_fold(conv: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn`` at inference can be folded into ``conv`` (types known, statistics kept, shapes fit).

    Example:
        >>> can_fold(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), can_fold(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(4))
        (True, False)
    """
    conv_ok = type(conv) in _CONVS or (isinstance(conv, nn.Conv2d) and type(conv).__name__ in _CONV_NAMES)
    norm_ok = type(bn) in _NORMS or _is_norm_act(bn)
    return (
        conv_ok
        and norm_ok
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == conv.out_channels
        and not conv.weight.is_meta
    )


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``conv`` that also does ``bn``'s inference-time affine map (see :func:`norm_remainder`).

    Args:
        conv: a convolution for which :func:`can_fold` holds with ``bn``.
        bn: the BatchNorm that reads ``conv``'s output.

    Returns:
        A new convolution of ``conv``'s type, with new weight and bias (no gradient needed).

    Example:
        >>> conv, bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4).eval()
        >>> bn.running_mean.uniform_(); bn.running_var.uniform_(1, 2); bn.weight.data.uniform_()
        tensor(...)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(fold_conv_bn(conv, bn)(x), bn(conv(x)), atol=1e-5)
        True
    """
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    folded = copy.copy(conv)  # shares nothing that folding changes: its parameters are replaced below
    folded._parameters = dict(conv._parameters)
    folded._buffers = dict(conv._buffers)
    folded._modules = dict(conv._modules)
    folded.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    folded.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return folded


def norm_remainder(bn: nn.Module) -> nn.Module:
    """What is left of ``bn`` once folded: nothing, or timm ``BatchNormAct2d``'s dropout and activation.

    Example:
        >>> norm_remainder(nn.BatchNorm2d(4))
        Identity()
    """
    if _is_norm_act(bn):
        return nn.Sequential(bn.drop, bn.act)
    return nn.Identity()
