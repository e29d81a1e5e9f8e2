"""torchvision models: a rule per family, for every task of ``torchvision.models.list_models()``.

Classification, video and quantizable models (as their float families) get ``stem``, stages, blocks and
``head``; detection models get the stem, stages and blocks of their backbone's body, ``backbone`` (the
model's ``backbone`` attribute), ``neck``, ``rpn``, ``roi_heads`` and ``head`` (the class-dependent
predictors); segmentation models their backbone's stem and stages, ``head`` and ``aux_head``; RAFT its
own parts. SSDlite's body gets the stages of the MobileNet it came from, across the two containers it is cut
into. A body whose shape no rule knows gets no stages: a group is right or absent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ._parts import Groups, Parts, assemble

__all__ = ["torchvision_groups", "body_parts", "ssd_body_parts", "rule_for"]

Rule = Callable[[nn.Module], Parts]


def torchvision_groups(model: nn.Module) -> Groups | None:
    """The groups of a torchvision model, or ``None`` when ``model`` is not one a rule knows.

    Example:
        >>> import torch, torchvision
        >>> with torch.device("meta"):
        ...     groups = torchvision_groups(torchvision.models.resnet50())
        >>> groups["stage1"], groups["block1"], groups["block16"], groups["head"]
        (('layer1',), ('layer1.0',), ('layer4.2',), ('fc',))
    """
    if not _built_by_torchvision(model):
        return None
    for cls in type(model).__mro__:  # quantizable models subclass their float family
        rule = _RULES.get(cls.__name__)
        if rule is not None and cls.__module__.startswith("torchvision.models"):
            return assemble(model, rule(model))
    return None


def rule_for(class_name: str) -> Rule | None:
    """The rule of the torchvision family whose class is called ``class_name`` (``"ResNet"``), if any."""
    return _RULES.get(class_name)


def _built_by_torchvision(model: nn.Module) -> bool:
    """Whether torchvision's own constructor built ``model``: then its parts are those a rule knows.

    A subclass that only adds behaviour (``class Net(fz.Freezable, ResNet)``, no ``__init__`` of its own)
    qualifies; one with its own ``__init__`` may add modules no rule knows, so it gets no guessed groups.
    """
    init = next(c for c in type(model).__mro__ if "__init__" in vars(c) and not c.__module__.startswith("freezable"))
    return init.__module__.startswith("torchvision.models")


# -- bodies: the part of a model that has a stem and stages --------------------------------------


def _children(module: nn.Module) -> dict[str, nn.Module]:
    return dict(module.named_children())


def body_parts(body: nn.Module, prefix: str = "") -> Parts | None:
    """Stem and stages of a classification body (a whole classifier, or a detection or segmentation body).

    ResNet-shaped bodies (``conv1``, ``layer1``...), MobileNet-shaped ones (a sequence that starts with a
    conv and holds inverted residuals) and VGG-shaped ones (convs and max-pools) are known; others: None.
    """
    children = _children(body)
    if "conv1" in children and "layer1" in children:
        stem = [f"{prefix}{n}" for n in ("conv1", "bn1", "relu", "maxpool") if n in children]
        stages = [[f"{prefix}layer{i}"] for i in range(1, 5) if f"layer{i}" in children]
        return Parts(stem=stem, stages=stages)
    kinds = {type(c).__name__ for c in children.values()}
    if "InvertedResidual" in kinds:
        return _split_at_downsampling(body, prefix, stem=1)
    if kinds and kinds <= {"Conv2d", "ReLU", "MaxPool2d", "BatchNorm2d"}:
        return _split_at_pools(body, prefix)
    return None


def _split_at_pools(container: nn.Module, prefix: str) -> Parts:
    """AlexNet, VGG, SqueezeNet, S3D: split after each max-pool; the first piece is the stem."""
    pieces: list[list[str]] = [[]]
    for name, child in container.named_children():
        pieces[-1].append(f"{prefix}{name}")
        if isinstance(child, (nn.MaxPool2d, nn.MaxPool3d)):
            pieces.append([])
    return Parts(stem=pieces[0], stages=[p for p in pieces[1:] if p])


def _split_at_downsampling(container: nn.Module, prefix: str, stem: int = 1) -> Parts:
    """MobileNet, EfficientNet, MNASNet, ConvNeXt, Swin: a flat sequence split where resolution drops."""
    parts = Parts()
    for index, (name, child) in enumerate(container.named_children()):
        if index < stem:
            parts.stem.append(f"{prefix}{name}")
        elif not parts.stages or _downsamples(child):
            parts.stages.append([f"{prefix}{name}"])
        else:
            parts.stages[-1].append(f"{prefix}{name}")
    return parts


def _downsamples(module: nn.Module) -> bool:
    for m in module.modules():
        if "PatchMerging" in type(m).__name__:
            return True
        stride = getattr(m, "stride", 1)
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and max(_pair(stride)) > 1:
            return True
    return False


def _pair(value: object) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),)


def _with_head(parts: Parts | None, model: nn.Module, *names: str) -> Parts:
    parts = parts or Parts()
    children = _children(model)
    parts.head = [n for n in names if children.get(n) is not None]
    return parts


# -- classification and video --------------------------------------------------------------------


def _resnet(model: nn.Module) -> Parts:
    return _with_head(body_parts(model), model, "fc")


def _features_at_pools(model: nn.Module) -> Parts:
    return _with_head(_split_at_pools(model.features, "features."), model, "classifier")


def _features_at_downsampling(model: nn.Module) -> Parts:
    return _with_head(_split_at_downsampling(model.features, "features."), model, "classifier", "head")


def _mnasnet(model: nn.Module) -> Parts:
    return _with_head(_split_at_downsampling(model.layers, "layers.", stem=8), model, "classifier")


def _densenet(model: nn.Module) -> Parts:
    parts = Parts()
    for name, _ in model.features.named_children():
        if name.startswith("denseblock"):
            parts.stages.append([])
        if name != "norm5":  # the final norm: with the last stage, as every final norm
            (parts.stages[-1] if parts.stages else parts.stem).append(f"features.{name}")
    return _with_head(parts, model, "classifier")


def _regnet(model: nn.Module) -> Parts:
    stages = [[f"trunk_output.{n}"] for n, _ in model.trunk_output.named_children()]
    return _with_head(Parts(stem=["stem"], stages=stages), model, "fc")


def _maxvit(model: nn.Module) -> Parts:
    stages = [[f"blocks.{i}"] for i in range(len(model.blocks))]
    blocks = [[f"blocks.{i}.layers.{j}"] for i, b in enumerate(model.blocks) for j in range(len(b.layers))]
    return _with_head(Parts(stem=["stem"], stages=stages, blocks=blocks), model, "classifier")


def _vit(model: nn.Module) -> Parts:
    layers = [f"encoder.layers.{n}" for n, _ in model.encoder.layers.named_children()]
    n = len(layers)
    stages = [layers[i * n // 4:(i + 1) * n // 4] for i in range(4)] if n > 4 else [[x] for x in layers]
    stem = ["conv_proj", "class_token", "encoder.pos_embedding", "encoder.dropout"]
    return _with_head(Parts(stem=stem, stages=stages, blocks=[[x] for x in layers]), model, "heads")


def _by_name(stem: Sequence[str], stages: Sequence[Sequence[str]], head: Sequence[str]) -> Rule:
    def rule(model: nn.Module) -> Parts:
        children = _children(model)
        parts = Parts(stem=[n for n in stem if n in children],
                      stages=[[n for n in s if n in children] for s in stages])
        return _with_head(parts, model, *head)

    return rule


def _video_resnet(model: nn.Module) -> Parts:
    return _with_head(Parts(stem=["stem"], stages=[[f"layer{i}"] for i in range(1, 5)]), model, "fc")


def _mvit(model: nn.Module) -> Parts:
    """MViT: a new stage at each block that pools its queries (where resolution drops)."""
    parts = Parts(stem=["conv_proj", "pos_encoding"], blocks=[])
    for index, block in enumerate(model.blocks):
        if not parts.stages or block.pool_skip is not None:
            parts.stages.append([])
        parts.stages[-1].append(f"blocks.{index}")
        parts.blocks.append([f"blocks.{index}"])
    return _with_head(parts, model, "head")


def _s3d(model: nn.Module) -> Parts:
    return _with_head(_split_at_pools(model.features, "features."), model, "classifier")


def _with_patch_embed(model: nn.Module) -> Parts:
    parts = _split_at_downsampling(model.features, "features.", stem=0)
    parts.stem = ["patch_embed", "pos_drop"]
    return _with_head(parts, model, "head")


def _raft(model: nn.Module) -> Parts:
    """RAFT: its own parts by name; no stem or stages (it has two encoders side by side)."""
    tasks = {n: [n] for n in ("feature_encoder", "context_encoder", "update_block")}
    return Parts(tasks=tasks, backbone=[])


# -- detection and segmentation ------------------------------------------------------------------


def _rcnn(model: nn.Module) -> Parts:
    parts = body_parts(model.backbone.body, "backbone.body.") or Parts()
    roi = _children(model.roi_heads)
    parts.tasks = {"neck": ["backbone.fpn"], "rpn": ["rpn"], "roi_heads": ["roi_heads"]}
    parts.head = [f"roi_heads.{n}" for n in ("box_predictor", "mask_predictor", "keypoint_predictor")
                  if roi.get(n) is not None]
    parts.backbone = ["backbone"]
    return parts


def _one_stage(model: nn.Module) -> Parts:
    """RetinaNet, FCOS: body, FPN, one head."""
    parts = body_parts(model.backbone.body, "backbone.body.") or Parts()
    parts.tasks = {"neck": ["backbone.fpn"]}
    parts.head, parts.backbone = ["head"], ["backbone"]
    return parts


def _ssd(model: nn.Module) -> Parts:
    """SSD (VGG body) and SSDlite (MobileNet body split in two containers)."""
    backbone = model.backbone
    parts = ssd_body_parts(backbone, "backbone.") or Parts()
    own = [f"backbone.{n}" for n, _ in backbone.named_parameters(recurse=False)]  # SSD's L2 norm scale
    parts.tasks = {"neck": own + ["backbone.extra"]}
    parts.head, parts.backbone = ["head"], ["backbone"]
    return parts


def ssd_body_parts(extractor: nn.Module, prefix: str = "") -> Parts | None:
    """Stem, stages and blocks of an SSD feature extractor's body (``features``): VGG's, or SSDlite's MobileNet.

    SSDlite cuts its MobileNet in two containers inside the block that gives the C4 map: ``features.0`` ends
    with that block's expansion conv, ``features.1`` starts with the rest of it. That block is one block
    here, across both; stages are cut where resolution drops, as in the MobileNet the body came from.
    """
    features = getattr(extractor, "features", None)
    if type(extractor).__name__.endswith("VGG") and isinstance(features, nn.Module):
        return body_parts(features, f"{prefix}features.")
    if type(extractor).__name__ != "SSDLiteFeatureExtractorMobileNet" or not isinstance(features, nn.Sequential):
        return None
    first, second = (list(c.named_children()) for c in features)
    units = [[f"{prefix}features.0.{n}"] for n, _ in first]
    rest = [[f"{prefix}features.1.{n}"] for n, _ in second]
    if first and second and type(first[-1][1]).__name__ != "InvertedResidual" and isinstance(second[0][1], nn.Sequential):
        units[-1] += rest.pop(0)[0:1]  # the C4 block: its expansion conv, then the rest of it
    units += rest
    modules = dict(extractor.named_modules(prefix=prefix.rstrip(".")))
    parts = Parts(stem=units[0])
    for unit in units[1:]:
        if not parts.stages or any(_downsamples(modules[n]) for n in unit):
            parts.stages.append([])
        parts.stages[-1] += unit
    parts.blocks = []  # as the MobileNet's: each block, a Sequential's members; the C4 block, one across both
    for unit in units[1:]:
        module = modules[unit[0]]
        if len(unit) == 1 and isinstance(module, nn.Sequential):
            parts.blocks += [[f"{unit[0]}.{n}"] for n, c in module.named_children() if any(True for _ in c.parameters())]
        else:
            parts.blocks.append(unit)
    return parts


def _segmentation(model: nn.Module) -> Parts:
    parts = body_parts(model.backbone, "backbone.") or Parts()
    parts.head = ["classifier"]
    parts.aux_head = ["aux_classifier"] if getattr(model, "aux_classifier", None) is not None else []
    parts.backbone = ["backbone"]
    return parts


_RULES: dict[str, Rule] = {
    "ResNet": _resnet,
    "AlexNet": _features_at_pools,
    "VGG": _features_at_pools,
    "SqueezeNet": _features_at_pools,
    "DenseNet": _densenet,
    "MobileNetV2": _features_at_downsampling,
    "MobileNetV3": _features_at_downsampling,
    "EfficientNet": _features_at_downsampling,
    "ConvNeXt": _features_at_downsampling,
    "SwinTransformer": _features_at_downsampling,
    "MNASNet": _mnasnet,
    "RegNet": _regnet,
    "MaxVit": _maxvit,
    "VisionTransformer": _vit,
    "GoogLeNet": _by_name(
        stem=("conv1", "maxpool1", "conv2", "conv3", "maxpool2"),
        stages=(("inception3a", "inception3b", "maxpool3"),
                ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4"),
                ("inception5a", "inception5b")),
        head=("fc", "aux1", "aux2"),
    ),
    "Inception3": _by_name(
        stem=("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
              "maxpool2"),
        stages=(("Mixed_5b", "Mixed_5c", "Mixed_5d"), ("Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
                ("Mixed_7a", "Mixed_7b", "Mixed_7c")),
        head=("fc", "AuxLogits"),
    ),
    "ShuffleNetV2": _by_name(stem=("conv1", "maxpool"), stages=(("stage2",), ("stage3",), ("stage4", "conv5")),
                             head=("fc",)),
    "VideoResNet": _video_resnet,
    "MViT": _mvit,
    "S3D": _s3d,
    "SwinTransformer3d": _with_patch_embed,
    "RAFT": _raft,
    "GeneralizedRCNN": _rcnn,
    "RetinaNet": _one_stage,
    "FCOS": _one_stage,
    "SSD": _ssd,
    "DeepLabV3": _segmentation,
    "FCN": _segmentation,
    "LRASPP": _segmentation,
}
