"""One tiny model per family of smp, ultralytics, diffusers and torchvision's feature extractors, each checked
against its library's own notion of its parts (``tools/oracles/libraries.py``): right, absent (no groups, for a
reason the sample states) or wrong.

    python tools/sweep.py libraries                          # every library installed (about a minute on a CPU)
    python tools/sweep.py libraries --libraries smp diffusers
    python tools/sweep.py libraries --models smp/Unet-resnet18

Each model is built with random weights; nothing is downloaded (ultralytics runs offline).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from freezable.detect import detect_groups
from tools.oracles.classifiers import stage_problems
from tools.oracles.groups import Groups, staged
from tools.oracles.libraries import (
    diffusers_problems,
    origin_problems,
    smp_freeze_problems,
    smp_problems,
    ultralytics_freeze_problems,
    ultralytics_problems,
    yolo_sections,
)
from tools.oracles.order import forward_order_problems, part_order_problems

from .report import Row, row

__all__ = ["LIBRARIES", "LibrarySample", "LIBRARY_SAMPLES", "library_of", "library_check", "sweep"]

os.environ.setdefault("YOLO_OFFLINE", "1")  # before anything imports ultralytics: no connectivity check

# the short names the sweep prints -> the module each library is imported as
LIBRARIES = {"smp": "segmentation_models_pytorch", "ultralytics": "ultralytics", "diffusers": "diffusers",
             "torchvision-features": "torchvision"}


@dataclass(frozen=True)
class LibrarySample:
    """A tiny model of one family of a library, random weights, nothing downloaded, and its checks."""

    build: Callable[[], nn.Module]  # builds the model afresh (seeded)
    check: Callable[[nn.Module, Groups], list[str]]  # the library's own notion, against detected groups
    call: Callable[[nn.Module], object]  # a forward on a real input (seeded)
    trainable: tuple[str, ...] = ()  # the groups left to train in the freeze-everything-but-X step
    absent: str = ""  # why the family gets no groups (then its groups must be empty)
    slow: bool = False  # the tests run it under -m slow only (the sweep always)


def _image(size: int, channels: int = 3) -> torch.Tensor:
    """A batch of two (BatchNorm after a global pool needs more than one value per channel in training)."""
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))


_LAST_BUILT: dict[Callable[[], nn.Module], nn.Module] = {}  # the last model built, whose copies the next builds are


def _seeded(make: Callable[[], nn.Module], copies: bool = True) -> Callable[[], nn.Module]:
    """``make`` seeded; with ``copies``, a model built again (the checks build several) is a deep copy of the last
    one built."""
    def build() -> nn.Module:
        if not copies:
            torch.manual_seed(0)
            return make()
        if make not in _LAST_BUILT:
            torch.manual_seed(0)
            _LAST_BUILT.clear()  # one model kept at a time
            _LAST_BUILT[make] = make()
        return copy.deepcopy(_LAST_BUILT[make])
    return build


def _smp(arch: str, encoder: str, **kwargs: object) -> LibrarySample:
    def make() -> nn.Module:
        import segmentation_models_pytorch as smp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # smp's own deprecation notes (timm- encoders)
            return getattr(smp, arch)(encoder, encoder_weights=None, classes=2, **kwargs)

    build = _seeded(make)
    return LibrarySample(build, lambda m, g: smp_problems(m, g, _image(64)) + smp_freeze_problems(build, _image(64)),
                         lambda m: m(_image(64)), trainable=("decoder", "segmentation_head"),
                         slow=encoder not in ("resnet18", "mobilenet_v2", "efficientnet-b0", "mit_b0", "tu-resnet18"))


def _yolo(task: str, yaml: str, slow: bool = False) -> LibrarySample:
    def make() -> nn.Module:
        from ultralytics.nn import tasks

        return getattr(tasks, task)(yaml, verbose=False)

    def check(model: nn.Module, groups: Groups) -> list[str]:
        backbone, _ = yolo_sections(model)
        ns = sorted({0, 1, len(backbone), len(model.model) - 1})
        return ultralytics_problems(model, groups, _image(64)) + ultralytics_freeze_problems(build, ns, _image(64))

    build = _seeded(make)
    return LibrarySample(build, check, lambda m: m(_image(64)), trainable=("task_head",), slow=slow)


def _diffusers(make: Callable[[], nn.Module], call: Callable[[nn.Module], object], trainable: tuple[str, ...],
               absent: str = "") -> LibrarySample:
    return LibrarySample(_seeded(make), lambda m, g: diffusers_problems(m, g, lambda: call(m.eval())), call,
                         trainable=trainable, absent=absent)


def _unet2d() -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       attention_head_dim=4)


def _unet2d_condition() -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def _autoencoder_kl() -> nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"))


def _vq_model() -> nn.Module:
    from diffusers import VQModel

    return VQModel(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, num_vq_embeddings=8,
                   layers_per_block=1)


def _transformer2d() -> nn.Module:
    from diffusers import Transformer2DModel

    return Transformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4, num_layers=1,
                              norm_num_groups=2, sample_size=8)


def _extractor(pair: Callable[[], tuple[nn.Module, nn.Module]], size: int, trainable: tuple[str, ...],
               call: Callable[[nn.Module], object] | None = None) -> LibrarySample:
    """A torchvision feature extractor, made by ``pair()`` as ``(the model it came from, the extractor)``."""
    call = call or (lambda m: m(_image(size)))

    def check(model: nn.Module, groups: Groups) -> list[str]:
        original, extractor = pair()
        problems = origin_problems(extractor, detect_groups(extractor), original, detect_groups(original))
        order = ["stem", *staged(groups, "stage"), "neck", "head"]
        return problems + stage_problems(model, groups) + part_order_problems(
            model, groups, {"stages": order, "blocks": staged(groups, "block")}, lambda: call(model.eval()))

    # built afresh each time: a deep copy of a traced graph loses the traced model's class name (torchvision 0.29)
    return LibrarySample(_seeded(lambda: pair()[1], copies=False), check, call, trainable=trainable)


def _layer_getter() -> tuple[nn.Module, nn.Module]:
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    model = torchvision.models.resnet18()
    return model, IntermediateLayerGetter(model, {"layer2": "c3", "layer4": "c5"})


def _graph(name: str, nodes: dict[str, str]) -> Callable[[], tuple[nn.Module, nn.Module]]:
    def pair() -> tuple[nn.Module, nn.Module]:
        import torchvision
        from torchvision.models.feature_extraction import create_feature_extractor

        model = torchvision.models.get_model(name)
        return model, create_feature_extractor(model, nodes)
    return pair


def _fpn_resnet() -> tuple[nn.Module, nn.Module]:
    import torchvision
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    model = torchvision.models.resnet18()
    return model, _resnet_fpn_extractor(model, trainable_layers=5)


def _fpn_mobilenet() -> tuple[nn.Module, nn.Module]:
    import torchvision
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    model = torchvision.models.mobilenet_v3_small()
    return model, _mobilenet_extractor(model, fpn=True, trainable_layers=6)


def _ssdlite_body() -> tuple[nn.Module, nn.Module]:
    """SSDlite's extractor, made as ``ssdlite320_mobilenet_v3_large`` makes it, from a MobileNet kept here."""
    from functools import partial

    import torchvision
    from torchvision.models.detection.ssdlite import _mobilenet_extractor

    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    model = torchvision.models.mobilenet_v3_large(norm_layer=norm_layer, reduced_tail=True)
    return model, _mobilenet_extractor(model, 6, norm_layer)


def _ssdlite_detector() -> LibrarySample:
    """The detector: its body's groups are those of its extractor alone (checked against its MobileNet above)."""
    def make() -> nn.Module:
        import torchvision

        return torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                           num_classes=3)

    def check(model: nn.Module, groups: Groups) -> list[str]:
        alone = {g: tuple(f"backbone.{m}" for m in members) for g, members in detect_groups(model.backbone).items()
                 if g != "backbone"}
        problems = [f"{g} differs from the extractor's alone" for g, members in alone.items() if groups.get(g) != members]
        return problems + stage_problems(model, groups) + forward_order_problems(model, groups, 64)

    def call(model: nn.Module) -> object:  # targets: a detector in training returns its losses
        target = {"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}
        return model(list(_image(64)), [target, target])

    return LibrarySample(_seeded(make), check, call, trainable=("neck", "head"))


LIBRARY_SAMPLES: dict[str, LibrarySample] = {
    "smp/Unet-resnet18": _smp("Unet", "resnet18", aux_params={"classes": 3}),
    "smp/FPN-mobilenet_v2": _smp("FPN", "mobilenet_v2"),
    "smp/DeepLabV3Plus-efficientnet-b0": _smp("DeepLabV3Plus", "efficientnet-b0"),
    "smp/Unet-mit_b0": _smp("Unet", "mit_b0"),
    "smp/FPN-tu-resnet18": _smp("FPN", "tu-resnet18"),
    "smp/Unet-tu-efficientnet_b0": _smp("Unet", "tu-efficientnet_b0"),
    "smp/Unet-tu-convnext_atto": _smp("Unet", "tu-convnext_atto"),
    "smp/Unet-timm-efficientnet-b0": _smp("Unet", "timm-efficientnet-b0"),
    "smp/Unet-timm-skresnet18": _smp("Unet", "timm-skresnet18"),
    "smp/Unet-densenet121": _smp("Unet", "densenet121"),
    "smp/Unet-se_resnet50": _smp("Unet", "se_resnet50"),
    "smp/Unet-xception": _smp("Unet", "xception"),
    "smp/Unet-dpn68": _smp("Unet", "dpn68"),
    "smp/Unet-vgg11": _smp("Unet", "vgg11"),
    "smp/Unet-mobileone_s0": _smp("Unet", "mobileone_s0"),
    "smp/Linknet-inceptionv4": _smp("Linknet", "inceptionv4"),
    "smp/Linknet-inceptionresnetv2": _smp("Linknet", "inceptionresnetv2"),
    "ultralytics/DetectionModel-yolov8n": _yolo("DetectionModel", "yolov8n.yaml"),
    "ultralytics/DetectionModel-yolo11n": _yolo("DetectionModel", "yolo11n.yaml"),
    "ultralytics/SegmentationModel-yolov8n-seg": _yolo("SegmentationModel", "yolov8n-seg.yaml"),
    "ultralytics/ClassificationModel-yolov8n-cls": _yolo("ClassificationModel", "yolov8n-cls.yaml"),
    "ultralytics/PoseModel-yolo11n-pose": _yolo("PoseModel", "yolo11n-pose.yaml"),
    "ultralytics/OBBModel-yolov8n-obb": _yolo("OBBModel", "yolov8n-obb.yaml", slow=True),
    "ultralytics/DetectionModel-yolo26n": _yolo("DetectionModel", "yolo26n.yaml", slow=True),
    "ultralytics/WorldModel-yolov8s-worldv2": _yolo("WorldModel", "yolov8s-worldv2.yaml", slow=True),
    "ultralytics/RTDETRDetectionModel-rtdetr-l": _yolo("RTDETRDetectionModel", "rtdetr-l.yaml", slow=True),
    "diffusers/UNet2DModel": _diffusers(_unet2d, lambda m: m(_image(16), 3), ("up_blocks", "head")),
    "diffusers/UNet2DConditionModel": _diffusers(
        _unet2d_condition, lambda m: m(_image(16, 4), 3, encoder_hidden_states=torch.ones(2, 5, 8)),
        ("up_blocks", "head")),
    "diffusers/AutoencoderKL": _diffusers(_autoencoder_kl, lambda m: m(_image(16)), ("decoder",)),
    "diffusers/VQModel": _diffusers(_vq_model, lambda m: m(_image(16)), ("decoder",)),
    "diffusers/Transformer2DModel": _diffusers(_transformer2d, lambda m: m(_image(8, 4)), (),
                                               absent="a transformer: no UNet blocks or autoencoder parts"),
    "torchvision-features/IntermediateLayerGetter-resnet18": _extractor(_layer_getter, 64, ("stage4",)),
    "torchvision-features/create_feature_extractor-resnet18": _extractor(
        _graph("resnet18", {"layer2": "c3", "layer4": "c5"}), 64, ("stage4",)),
    "torchvision-features/create_feature_extractor-mobilenet_v3_small": _extractor(
        _graph("mobilenet_v3_small", {"features.6": "c4", "features.12": "c5"}), 64, ("stage4",)),
    "torchvision-features/BackboneWithFPN-resnet18": _extractor(_fpn_resnet, 64, ("stage4", "neck")),
    "torchvision-features/BackboneWithFPN-mobilenet_v3_small": _extractor(_fpn_mobilenet, 64, ("neck",)),
    "torchvision-features/SSDLiteFeatureExtractorMobileNet": _extractor(_ssdlite_body, 64, ("neck",)),
    "torchvision-features/ssdlite320_mobilenet_v3_large": _ssdlite_detector(),
}


def library_of(key: str) -> str:
    """The library short name of a sample key (``"smp/Unet-resnet18"`` -> ``"smp"``)."""
    return key.partition("/")[0]


def library_check(key: str) -> Row:
    """Builds the sample ``key``, detects its groups and checks them: right, absent (no groups: the sample says why),
    wrong (never raises: a model that fails to build, detect or check is wrong) or skipped (not installed)."""
    sample = LIBRARY_SAMPLES[key]
    library, model_name = library_of(key), key.partition("/")[2]
    if importlib.util.find_spec(LIBRARIES[library]) is None:
        return Row(library, model_name, "skipped", (f"{LIBRARIES[library]} is not installed",))
    try:
        model = sample.build()
        groups = detect_groups(model)
        if sample.absent:
            return row(library, model_name, [sample.absent], [f"groups {list(groups)} where none was expected"]
                       if groups else [])
        problems = sample.check(model, groups) if groups else ["no groups"]
    except Exception as e:  # noqa: BLE001 - a model that fails to build, detect or check is wrong, not fatal
        problems = [f"{type(e).__name__}: {e}"]
    return row(library, model_name, wrong=problems)


def sweep(libraries: list[str], models: list[str] | None = None) -> list[Row]:
    """A row per sample of the named libraries, or per named sample."""
    return [library_check(key) for key in LIBRARY_SAMPLES
            if library_of(key) in libraries and (models is None or key in models)]
