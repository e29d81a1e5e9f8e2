"""segmentation_models_pytorch (smp): its segmentation models and its encoders, read as smp splits them.

An smp encoder returns one feature map per output stride, ``features[k]`` at stride ``2 ** k``
(``features[0]`` is the input, or for VGG a full-resolution map); each encoder's own ``forward`` says
which of its modules run before which feature, and ``_out_indexes`` / ``_stage_idxs`` where it cuts its
block lists. :func:`smp_groups` names those pieces, per encoder class (a rule each, as ``forward`` reads):

* ``stem``: what runs up to the stride-2 feature (a Mix Transformer has none: its stride-2 feature is an
  empty placeholder);
* ``stage1`` ... ``stage4``: what runs between the features at strides 4, 8, 16, 32 (parameters no
  feature uses, such as EfficientNet's ``_conv_head`` that smp keeps, go with the last stage);
* ``block1`` ... ``blockN``: the stages' blocks (the members of their Sequentials);
* timm encoders (``tu-`` names, ``TimmUniversalEncoder``; ``TimmViTEncoder``): timm's own groups of the
  timm model inside (``encoder.model``).

A ``SegmentationModel`` (Unet, FPN, DeepLabV3+, ...) adds smp's own parts by their attribute names:
``encoder``, ``decoder``, ``segmentation_head``, ``classification_head`` (with ``aux_params``), and
``backbone``, the vocabulary's umbrella, equal to ``encoder``: what ``model.freeze_encoder()`` freezes
(the preset ``smp.freeze_encoder``). An encoder alone gets its stem, stages, blocks and ``backbone``.

smp is never imported here: a model of it can only exist when it is in ``sys.modules``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ._parts import Groups, Parts, assemble, instance_of, param_names, with_prefix
from .timm import timm_groups

__all__ = ["smp_groups", "is_smp_model", "encoder_pieces"]

_PACKAGE = "segmentation_models_pytorch"
_PARTS = ("encoder", "decoder", "segmentation_head", "classification_head")

Pieces = dict[int, list[str]]  # feature index k (stride 2 ** k) -> what runs after feature k-1, up to feature k


def is_smp_model(model: object) -> bool:
    """Whether ``model`` is an smp ``SegmentationModel`` (without importing smp)."""
    return instance_of(model, f"{_PACKAGE}.base.model", "SegmentationModel")


def _is_smp_encoder(module: nn.Module) -> bool:
    return type(module).__module__.startswith(f"{_PACKAGE}.encoders")


def smp_groups(model: nn.Module) -> Groups | None:
    """The groups of an smp segmentation model or encoder, or ``None`` when ``model`` is neither.

    Example:
        >>> import torch, segmentation_models_pytorch as smp
        >>> with torch.device("meta"):
        ...     groups = smp_groups(smp.Unet("resnet18", encoder_weights=None))
        >>> list(groups)[:6]
        ['stem', 'stage1', 'stage2', 'stage3', 'stage4', 'block1']
        >>> groups["stem"], groups["stage1"]
        (('encoder.conv1', 'encoder.bn1', 'encoder.relu'), ('encoder.maxpool', 'encoder.layer1'))
        >>> [g for g in groups if not g[-1].isdigit()]
        ['stem', 'encoder', 'decoder', 'segmentation_head', 'backbone']
    """
    if is_smp_model(model):
        encoder = model.get_submodule("encoder")
        inner = encoder_groups(encoder)
        inner.pop("backbone", None)
        groups = with_prefix(inner, "encoder.")
        children = dict(model.named_children())
        groups.update((part, (part,)) for part in _PARTS if children.get(part) is not None)
        groups["backbone"] = ("encoder",)
        return groups
    if _is_smp_encoder(model) and (_rule(model) is not None or _timm_inside(model) is not None):
        return encoder_groups(model)
    return None


def encoder_groups(encoder: nn.Module) -> Groups:
    """Stem, stages, blocks and ``backbone`` of an smp encoder; empty when no rule knows its class."""
    inner = _timm_inside(encoder)
    if inner is not None:
        groups = timm_groups(inner) or {}
        groups = {g: m for g, m in groups.items() if g != "head"}
        return with_prefix(groups, "model.") if groups else {}
    pieces = encoder_pieces(encoder)
    if pieces is None:
        return {}
    stem = [n for k in sorted(pieces) if k <= 1 for n in pieces[k]]
    # a piece without parameters (VGG's last max-pool alone) is no stage
    stages = [pieces[k] for k in sorted(pieces) if k >= 2 and param_names(encoder, pieces[k])]
    return assemble(encoder, Parts(stem=stem, stages=stages))


def _timm_inside(encoder: nn.Module) -> nn.Module | None:
    """The timm model of smp's timm encoders (``TimmUniversalEncoder``, ``TimmViTEncoder``), else None."""
    if type(encoder).__name__ in ("TimmUniversalEncoder", "TimmViTEncoder") and _is_smp_encoder(encoder):
        inner = getattr(encoder, "model", None)
        return inner if isinstance(inner, nn.Module) else None
    return None


def encoder_pieces(encoder: nn.Module) -> Pieces | None:
    """What runs before each feature of an smp encoder: feature index -> module names (those it has).

    Example:
        >>> import torch, segmentation_models_pytorch as smp
        >>> with torch.device("meta"):
        ...     encoder = smp.encoders.get_encoder("mobilenet_v2")
        >>> encoder_pieces(encoder)[2]
        ['features.2', 'features.3']
    """
    rule = _rule(encoder)
    if rule is None:
        return None
    names = {n for n, _ in encoder.named_modules()} | {n for n, _ in encoder.named_parameters()}
    pieces = {k: [n for n in members if n in names] for k, members in rule(encoder).items()}
    return {k: members for k, members in pieces.items() if members}


# -- one rule per encoder class, as its forward reads ----------------------------------------------


def _named(*pieces: list[str], first: int = 1) -> Callable[[nn.Module], Pieces]:
    def rule(encoder: nn.Module) -> Pieces:
        return {first + i: list(p) for i, p in enumerate(pieces)}

    return rule


def _resnet(encoder: nn.Module) -> Pieces:
    """torchvision's ResNet (``relu``) and timm's (``act1``, smp's SK-ResNets)."""
    act = "act1" if hasattr(encoder, "act1") else "relu"
    return {1: ["conv1", "bn1", act], 2: ["maxpool", "layer1"], 3: ["layer2"], 4: ["layer3"], 5: ["layer4"]}


def _densenet(encoder: nn.Module) -> Pieces:
    """Each transition's norm and relu end a stage; its conv and pool start the next."""
    f = "features."
    pieces = {1: [f"{f}conv0", f"{f}norm0", f"{f}relu0"], 2: [f"{f}pool0"]}
    for i in range(1, 5):
        pieces[i + 1].append(f"{f}denseblock{i}")
        if i < 4:
            pieces[i + 1] += [f"{f}transition{i}.norm", f"{f}transition{i}.relu"]
            pieces[i + 2] = [f"{f}transition{i}.conv", f"{f}transition{i}.pool"]
    pieces[5].append(f"{f}norm5")
    return pieces


def _split(container: str, children: list[str], ends: list[int], first: int) -> Pieces:
    """``container``'s children cut after each index of ``ends``: piece ``first``, ``first + 1``, ..."""
    pieces: Pieces = {}
    start = 0
    for k, end in enumerate(ends):
        pieces[first + k] = [f"{container}.{c}" for c in children[start:end + 1]]
        start = end + 1
    return pieces


def _out_indexes(first: int) -> Callable[[nn.Module], Pieces]:
    """MobileNetV2, InceptionV4 (``features[0]`` is the input: first 1), VGG (no input feature: first 0):
    ``features`` cut after each of ``_out_indexes``."""
    def rule(encoder: nn.Module) -> Pieces:
        children = [n for n, _ in encoder.get_submodule("features").named_children()]
        return _split("features", children, list(encoder._out_indexes), first)

    return rule


def _smp_efficientnet(encoder: nn.Module) -> Pieces:
    """smp's own EfficientNet: the stem, then ``_blocks`` cut after each of ``_out_indexes``."""
    children = [n for n, _ in encoder.get_submodule("_blocks").named_children()]
    return {1: ["_conv_stem", "_bn0", "_swish"], **_split("_blocks", children, list(encoder._out_indexes), 2)}


def _stage_idxs(stem: list[str], container: str, start: int = 0) -> Callable[[nn.Module], Pieces]:
    """timm-efficientnet, DPN: ``container[start:]`` cut before each of ``_stage_idxs`` (three cuts: to the end;
    four, as DPN: the last ends the last stage)."""
    def rule(encoder: nn.Module) -> Pieces:
        children = [n for n, _ in encoder.get_submodule(container).named_children()]
        cuts = list(encoder._stage_idxs)
        lows, highs = [start, *cuts[:3]], [*cuts[:3], cuts[3] if len(cuts) > 3 else len(children)]
        pieces = {2 + k: [f"{container}.{c}" for c in children[lo:hi]] for k, (lo, hi) in enumerate(zip(lows, highs))}
        return {1: list(stem), **pieces}

    return rule


def _dpn(encoder: nn.Module) -> Pieces:
    """DPN: its input block's conv, norm and act, then its pool with the blocks up to the first cut."""
    first = next(n for n, _ in encoder.get_submodule("features").named_children())
    stem = [f"features.{first}.{n}" for n in ("conv", "bn", "act")]
    pieces = _stage_idxs(stem, "features", start=1)(encoder)
    pieces[2].insert(0, f"features.{first}.pool")
    return pieces


_XCEPTION_STEM = ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2"]

# "<smp module>.<class>" -> rule; looked up along the class's MRO
_RULES: dict[str, Callable[[nn.Module], Pieces]] = {
    "resnet.ResNetEncoder": _resnet,
    "timm_sknet.SkNetEncoder": _resnet,
    "senet.SENetEncoder": _named(["layer0"], ["layer0_pool", "layer1"], ["layer2"], ["layer3"], ["layer4"]),
    "densenet.DenseNetEncoder": _densenet,
    "inceptionresnetv2.InceptionResNetV2Encoder": _named(
        ["conv2d_1a", "conv2d_2a", "conv2d_2b"], ["maxpool_3a", "conv2d_3b", "conv2d_4a"],
        ["maxpool_5a", "mixed_5b", "repeat"], ["mixed_6a", "repeat_1"], ["mixed_7a", "repeat_2", "block8", "conv2d_7b"]),
    "xception.XceptionEncoder": _named(_XCEPTION_STEM, ["block1"], ["block2"], [f"block{i}" for i in range(3, 12)],
                                       ["block12", "conv3", "bn3", "relu3", "conv4", "bn4"]),
    "mobileone.MobileOne": _named(*[[f"stage{i}"] for i in range(5)]),
    "mix_transformer.MixVisionTransformerEncoder": _named(
        *[[f"patch_embed{i}", f"block{i}", f"norm{i}"] for i in range(1, 5)], first=2),
    "mobilenet.MobileNetV2Encoder": _out_indexes(first=1),
    "inceptionv4.InceptionV4Encoder": _out_indexes(first=1),
    "vgg.VGGEncoder": _out_indexes(first=0),
    "efficientnet.EfficientNetEncoder": _smp_efficientnet,
    "timm_efficientnet.EfficientNetBaseEncoder": _stage_idxs(["conv_stem", "bn1"], "blocks"),
    "dpn.DPNEncoder": _dpn,
}


def _rule(encoder: nn.Module) -> Callable[[nn.Module], Pieces] | None:
    for cls in type(encoder).__mro__:
        module = cls.__module__
        if module.startswith(f"{_PACKAGE}.encoders."):
            rule = _RULES.get(f"{module.rpartition('.')[2]}.{cls.__name__}")
            if rule is not None:
                return rule
    return None
