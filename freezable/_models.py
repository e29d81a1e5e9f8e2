"""Builds torchvision and timm models by name without memory or weights (the meta device)."""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .errors import FreezableError, closest

__all__ = ["SOURCES", "build_model", "empty_weights", "sources_of"]


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Puts every parameter and buffer that modules register on the meta device, computing on the CPU.

    For models whose constructor computes with tensors (torchvision's RegNet), where
    ``with torch.device("meta")`` fails on the first ``.item()``.
    """
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register_parameter(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def buffer(module: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        register_buffer(module, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


SOURCES = ("torchvision", "timm")  # a bare name both have is torchvision's: the rule for ambiguous names


def sources_of(bare: str) -> list[str]:
    """The libraries that have a model called ``bare``, in :data:`SOURCES` order.

    Example:
        >>> sources_of("convnext_tiny"), sources_of("resnet18d"), sources_of("nothing")
        (['torchvision', 'timm'], ['timm'], [])
    """
    import timm
    import torchvision

    return [s for s, has in zip(SOURCES, (bare in torchvision.models.list_models(), timm.is_model(bare))) if has]


def build_model(name: str, features_only: bool = False) -> nn.Module:
    """Builds the torchvision (any task) or timm model ``name`` with no memory and no weights.

    A ``timm/`` or ``torchvision/`` prefix picks the source; a bare name that both libraries have is
    torchvision's (one rule, :data:`SOURCES` order). torchvision's detection and segmentation models are built
    with ``weights_backbone=None`` too; ``features_only`` builds a timm model as a feature backbone.

    Raises:
        FreezableError: no such model in the source, or ``features_only`` for a torchvision model (the
            message names the closest names, or the ``timm/`` name to use).

    Example:
        >>> build_model("torchvision/regnet_y_400mf").fc.weight.is_meta
        True
    """
    import timm
    import torchvision

    source, _, bare = name.rpartition("/")
    have = sources_of(bare)
    if source not in ("", *SOURCES) or (source and source not in have) or not have:
        names = torchvision.models.list_models() if source == "torchvision" else timm.list_models()
        names = names if source else torchvision.models.list_models() + timm.list_models()
        where = f" in {source}" if source in SOURCES else ""
        raise FreezableError(f"unknown model {name!r}{where}; {closest(bare, names)}")
    source = source or have[0]
    if features_only and source == "torchvision":
        hint = (f"timm has it too: say timm/{bare} (a bare name both libraries have is torchvision's)"
                if "timm" in have else "build it with torchvision.models.feature_extraction instead")
        raise FreezableError(f"--features-only builds timm models, and {bare!r} is torchvision's; {hint}")
    if source == "torchvision":
        builder = torchvision.models.get_model_builder(bare)
        extra = {"weights_backbone": None} if "weights_backbone" in inspect.signature(builder).parameters else {}
        return _on_meta(lambda: builder(weights=None, **extra))
    if features_only:
        return _on_meta(lambda: timm.create_model(bare, pretrained=False, features_only=True))
    model = _on_meta(lambda: timm.create_model(bare, pretrained=False))
    if getattr(model, "num_classes", None) == 0:  # a feature model by default: give it timm's usual classifier
        model = _on_meta(lambda: timm.create_model(bare, pretrained=False, num_classes=1000))
    return model


def _on_meta(make: Callable[[], nn.Module]) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return make()
        except NotImplementedError:  # the constructor computes with tensors: weights alone go to meta
            with empty_weights():
                return make()
