"""The frozen fast path of ``FrozenBackbone(fast=True)``: an inference-optimised shadow of the backbone.

The shadow is built lazily, at the first forward that needs it, and is never registered on the
wrapper: ``state_dict()``, ``parameters()`` and ``.to()`` see the original backbone only. In it:

* every *held* submodule (frozen, with no trainable parameter below it) is replaced by a copy in
  eval mode with each BatchNorm folded into the convolution whose output it reads (timm's
  ``BatchNormAct2d`` keeps its dropout and activation); convolution-BatchNorm pairs are found by
  tracing one forward (autocast off), and a copy whose folded output does not match the original
  within 1e-2 relative on that batch is used unfolded;
* with ``channels_last`` the copies' 4-d weights and inputs use the channels-last memory format;
* with ``frozen_dtype`` the copies store their floating tensors in that dtype; their floating inputs are
  cast to it and their outputs cast back to the input's dtype;
* the rest (trainable parts and modules above the held ones) is the original modules, shared, so
  an optimizer still trains them and their modes follow ``train()``.

Tensors are shared with the original wherever the copy does not change them, so a frozen backbone
without BatchNorm (a ViT) costs no extra memory in fp32. The shadow is dropped, to be rebuilt at the
next forward, on ``freeze``/``unfreeze``, ``load_state_dict``, ``.to()``/``.cuda()``/``.half()``,
and (outside ``torch.compile``) whenever other parts are held (any Freezable, around the wrapper or
inside it, changed a hold), an original tensor that a copy was derived from changed
in place, or an object the shadow was built from was replaced: a parameter or buffer of a held part
(``load_state_dict(assign=True)`` on the backbone, ``conv.weight = nn.Parameter(...)``) or any
submodule of the backbone. That check is one identity comparison per submodule and held tensor, and
one version comparison per derived tensor, at every forward (a ResNet-50: see
``benchmarks/fast_path_staleness.py``).

The state (:mod:`~freezable.fast.path`), the build (:mod:`~freezable.fast.build`), the traced forward it
reads (:mod:`~freezable.fast.trace`) and the folding arithmetic (:mod:`~freezable.fast.fold`).
"""

from .build import build_fast_path as build_fast_path
from .path import FastOptions as FastOptions
from .path import FastPath as FastPath

__all__ = ["FastOptions", "FastPath", "build_fast_path"]
