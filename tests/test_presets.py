"""The preset registry: API.md section 3."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import freezable as fz
from freezable.detect import detect_groups
from freezable.presets.registry import _PRESETS

# the model a preset is tried on: its own where it names a family, else the resnet18 of its library
# (torchvision's for the generic presets, which fit both)
EXAMPLES = {"torchvision.alexnet.classifier_only": ("torchvision", "alexnet"),
            "timm.hrnet.backbone": ("timm", "hrnet_w18_small")}
EXAMPLES.update({f"torchvision.detection.trainable_backbone_layers_{n}":
                 ("torchvision", "fasterrcnn_mobilenet_v3_large_320_fpn") for n in range(7)})
EXAMPLES["smp.freeze_encoder"] = ("smp", "resnet18")
# freeze=N leaves the last layer to train: a model with more than N layers (yolov8n 23, yolov5n-p6 34, yolov9e 43)
EXAMPLES.update({f"ultralytics.freeze_{n}": ("ultralytics", "yolov8n.yaml" if n < 23 else "yolov5n-p6.yaml" if n < 34
                                             else "yolov9e.yaml") for n in range(43)})
SLOW = {name for name, example in EXAMPLES.items() if example[1] == "yolov9e.yaml"}  # 58M parameters: 3 s each
EXAMPLES.update({f"open_clip.lock_{tower}_tower_{n}": ("open_clip", "tiny ViT") for tower in ("image", "text")
                 for n in range(7)})


def build(source: str, name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    if source == "open_clip":  # open_clip's own ViT and text tower, tiny
        open_clip = pytest.importorskip("open_clip")
        vision = dict(layers=3, width=16, head_width=8, patch_size=8, image_size=16)
        return open_clip.CLIP(embed_dim=8, vision_cfg=vision,
                              text_cfg=dict(context_length=4, vocab_size=50, width=8, heads=2, layers=3))
    if source == "timm":
        return timm.create_model(name, pretrained=False, **kwargs)
    if source == "smp":
        smp = pytest.importorskip("segmentation_models_pytorch")
        return smp.Unet(name, encoder_weights=None)
    if source == "ultralytics":
        pytest.importorskip("ultralytics")
        from ultralytics.nn.tasks import DetectionModel

        return DetectionModel(name, verbose=False)
    if name.startswith("fasterrcnn"):
        kwargs.setdefault("weights_backbone", None)
    return torchvision.models.get_model(name, weights=None, **kwargs)


def example_for(preset: fz.Preset) -> tuple[str, str]:
    source = preset.name.split(".")[0]
    return EXAMPLES.get(preset.name, (source if source == "timm" else "torchvision", "resnet18"))


def test_required_presets_are_registered():
    required = ["torchvision.alexnet.classifier_only", "timm.hrnet.backbone", "linear_probe"]
    required += [f"frozen_stages_{n}" for n in range(1, 5)]
    assert set(required) <= set(fz.list_presets())


def test_list_presets_is_sorted():
    assert fz.list_presets("*frozen_stages_1") == ["frozen_stages_1", "timm.frozen_stages_1",
                                                    "torchvision.frozen_stages_1"]


@pytest.mark.parametrize("source", ["timm", "torchvision"])
@pytest.mark.parametrize("generic", ["linear_probe"] + [f"frozen_stages_{n}" for n in range(1, 5)])
def test_library_names_are_aliases_of_the_generic_presets(source, generic):
    alias, preset = fz.get_preset(f"{source}.{generic}"), fz.get_preset(generic)
    fields = ("groups", "frozen", "train_bn", "norm_eval")
    assert [getattr(alias, f) for f in fields] == [getattr(preset, f) for f in fields]
    assert alias.description == f"alias of {generic}: {preset.description}"


def test_list_presets_filters_with_a_glob():
    assert fz.list_presets("torchvision.*") == [n for n in fz.list_presets() if n.startswith("torchvision.")]
    assert fz.list_presets("nothing*") == []


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else [])
                                  for n in fz.list_presets()])
def test_every_preset_applies_to_a_model_it_is_meant_for(name):
    preset = fz.get_preset(name)
    source, model_name = example_for(preset)
    fb = fz.FrozenBackbone(build(source, model_name), preset=name)
    assert set(preset.frozen) <= set(fb.frozen_groups)
    frozen = {n for n, p in fb.backbone.named_parameters() if not p.requires_grad}
    for group in preset.frozen:
        assert {n for n, _ in fb.freeze_group(group).named_parameters(fb.backbone)} <= frozen
    assert any(p.requires_grad for p in fb.parameters()), "something must still train"
    # what fine-tuning replaces trains (ultralytics' ``head`` is its yaml's head section, its last layer ``task_head``)
    head = "task_head" if "task_head" in fb.freeze_group_names else "head"
    if head in fb.freeze_group_names:
        assert all(p.requires_grad for n, p in fb.freeze_group(head).named_parameters(fb.backbone) if ".dfl." not in n)


@pytest.mark.parametrize("features_only", [False, True])
@pytest.mark.parametrize("model_name", ["hrnet_w18_small", "hrnet_w18_small_v2", "hrnet_w32"])
def test_hrnet_backbone_preset_fits_every_variant(model_name, features_only):
    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, features_only=features_only)
    fb = fz.FrozenBackbone(model, preset="timm.hrnet.backbone")
    assert fb.frozen_groups[:5] == ("stem", "stage1", "stage2", "stage3", "stage4")
    # transition i goes with stage i (mmpose's rule), in the preset and in detection alike
    assert fb.freeze_group("stage3").modules == ("stage3", "transition3")
    assert detect_groups(model)["stage3"] == ("stage3", "transition3")
    assert model.bn1.weight.requires_grad is False and fb.train().backbone.stage4.training is False
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("incre_modules", "downsamp_modules", "final_layer", "classifier"))
                             for n in trainable)


def test_apply_preset_on_a_freezable_subclass():
    class AlexNet(fz.Freezable, torchvision.models.AlexNet):
        pass

    model = fz.apply_preset(AlexNet(num_classes=3), "torchvision.alexnet.classifier_only")
    assert model.freeze_group_names == ("features", "avgpool", "classifier", "head", "backbone")
    assert model.frozen_groups == ("features", "backbone")
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_the_alexnet_preset_has_the_backbone_and_head_detection_gives_alexnet():
    """The vocabulary of every classification preset: backbone and head, equal to the detected ones."""
    alexnet = torchvision.models.alexnet(num_classes=3)
    fb = fz.FrozenBackbone(alexnet, preset="torchvision.alexnet.classifier_only")
    detected = fz.FrozenBackbone(torchvision.models.alexnet(num_classes=3))
    for group in ("backbone", "head"):
        ours = [n for n, _ in fb.freeze_group(group).named_parameters(alexnet)]
        assert ours == [n for n, _ in detected.freeze_group(group).named_parameters(detected.backbone)]
    assert {n for n, p in alexnet.named_parameters() if p.requires_grad} == {
        n for n, _ in fb.freeze_group("head").named_parameters(alexnet)}


def test_register_and_get_a_custom_preset():
    preset = fz.Preset("test.custom_first_conv", "first conv only", {"first": "conv1"}, frozen=("first",))
    try:
        assert fz.register_preset(preset) is preset
        assert fz.get_preset("test.custom_first_conv") is preset
        with pytest.raises(fz.FreezableError, match="'test.custom_first_conv' is already registered"):
            fz.register_preset(preset)
    finally:
        _PRESETS.pop("test.custom_first_conv")


def test_preset_is_a_frozen_dataclass():
    preset = fz.get_preset("timm.hrnet.backbone")
    with pytest.raises(AttributeError):
        preset.name = "x"
    with pytest.raises(TypeError):
        preset.groups["stem"] = "conv1"


# -- norm_eval -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", fz.list_presets())
def test_norm_eval_is_set_by_the_frozen_stages_and_detection_presets(name):
    expected = "frozen_stages_" in name or name.startswith("torchvision.detection.trainable_backbone_layers_")
    assert fz.get_preset(name).norm_eval is expected
    assert ("norm_eval" in fz.get_preset(name).description) is expected


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_frozen_stages_preset_is_mmdetections_frozen_stages_with_norm_eval(source):
    """mmdetection's ResNet(frozen_stages=2, norm_eval=True): stages 1-2 frozen; every BatchNorm in eval after
    train(); stages 3-4 keep their affine parameters trainable."""
    with torch.device("meta"):
        model = build(source, "resnet50")
    fb = fz.FrozenBackbone(model, preset=f"{source}.frozen_stages_2").train()
    bns = [m for m in fb.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 53 and not any(m.training for m in bns)
    assert all(p.requires_grad for layer in ("layer3", "layer4") for p in fb.backbone.get_submodule(layer).parameters())
    assert not any(p.requires_grad for p in fb.backbone.layer2.parameters())


def test_trainable_backbone_layers_preset_holds_the_body_as_torchvisions_frozen_batch_norm():
    """torchvision builds a pretrained detector's body with FrozenBatchNorm2d (statistics fixed) and its FPN (v2:
    BatchNorm2d) normally: the preset holds the body's BatchNorms, the FPN's follow train(). (Which parameters it
    freezes is checked against torchvision in tests/peers/test_torchvision_detection.py.)"""
    with torch.device("meta"):
        model = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
    fb = fz.FrozenBackbone(model, preset="torchvision.detection.trainable_backbone_layers_3").train()
    body = fb.backbone.backbone.body
    body_norms = [m for m in body.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(body_norms) == 53 and not any(m.training for m in body_norms)
    fpn_norms = [m for m in fb.backbone.backbone.fpn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert fpn_norms and all(m.training for m in fpn_norms)
    assert body.layer2[0].bn1.weight.requires_grad and not body.layer1[0].bn1.weight.requires_grad


# -- the registry: numbered families and aliases ---------------------------------------------------------------

# every preset name the registry had as 82 separate entries before families and aliases; each must still work
NAMES_BEFORE = {"linear_probe", "torchvision.alexnet.classifier_only", "timm.hrnet.backbone", "smp.freeze_encoder",
                *(f"frozen_stages_{n}" for n in range(1, 5)),
                *(f"{source}.{name}" for source in ("timm", "torchvision")
                  for name in ("linear_probe", *(f"frozen_stages_{n}" for n in range(1, 5)))),
                *(f"open_clip.lock_{tower}_tower_{n}" for tower in ("image", "text") for n in range(7)),
                *(f"torchvision.detection.trainable_backbone_layers_{n}" for n in range(7)),
                *(f"ultralytics.freeze_{n}" for n in range(43))}


def test_every_name_of_before_families_is_listed_and_found():
    assert set(fz.list_presets()) == NAMES_BEFORE
    for name in NAMES_BEFORE:
        preset = fz.get_preset(name)
        assert preset.name == name and fz.get_preset(name) is preset


def test_numbered_presets_are_one_entry_each_and_aliases_a_table_of_names():
    from freezable.presets import Alias, PresetFamily

    assert isinstance(_PRESETS["ultralytics.freeze_N"], PresetFamily) and "ultralytics.freeze_3" not in _PRESETS
    assert _PRESETS["timm.frozen_stages_N"] == Alias("timm.frozen_stages_N", "frozen_stages_N")
    assert _PRESETS["torchvision.linear_probe"] == Alias("torchvision.linear_probe", "linear_probe")
    assert len(_PRESETS) == 13


def test_a_number_outside_a_family_names_the_numbers_it_has():
    with pytest.raises(fz.PresetError, match=r"unknown preset 'ultralytics.freeze_43': ultralytics.freeze_N takes "
                                             r"N in 0..42"):
        fz.get_preset("ultralytics.freeze_43")
    with pytest.raises(fz.PresetError, match=r"'timm.frozen_stages_5': timm.frozen_stages_N takes N in 1..4"):
        fz.get_preset("timm.frozen_stages_5")


def test_register_a_custom_family_and_alias():
    from freezable.presets import Alias, PresetFamily

    family = PresetFamily("test.first_N", range(1, 3), lambda n: fz.Preset(
        f"test.first_{n}", f"the first {n} layer(s) frozen", {"first": [str(i) for i in range(n)]}, frozen=("first",)))
    try:
        fz.register_preset(family)
        fz.register_preset(Alias("test.also_first_N", "test.first_N"))
        assert fz.list_presets("test.*") == ["test.also_first_1", "test.also_first_2", "test.first_1", "test.first_2"]
        model = fz.apply_preset(fz.freezable(torch.nn.Sequential(*(torch.nn.Linear(2, 2) for _ in range(3)))),
                                "test.also_first_2")
        assert [p.requires_grad for p in model.parameters()] == [False] * 4 + [True] * 2
        with pytest.raises(fz.PresetError, match="'test.first_2' is already registered"):
            fz.register_preset(fz.Preset("test.first_2", "taken by the family"))
    finally:
        from freezable.presets.registry import _MADE

        for name in ("test.first_N", "test.also_first_N"):
            _PRESETS.pop(name, None)
        for name in [n for n in _MADE if n.startswith("test.")]:
            del _MADE[name]
