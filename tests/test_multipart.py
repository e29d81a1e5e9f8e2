"""Models of several parts: each part's groups named after it, each checked against its library's own notion.

The families (one tiny model each, random weights) and their checks live in ``tools/sweeps/multipart.py``; the
tests here run every check of every family, the freeze-everything-but-X training step of each, and what the
names do in ``freeze_to``, ``UnfreezeSchedule``, ``param_groups(layer_decay=)`` and the command line.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from conftest import changed, snapshot
from torch import nn

import freezable as fz
from freezable.detect import detect_groups

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


from tools.sweep import main as sweep_main
from tools.sweeps import multipart
from tools.sweeps.report import report

TINY = [f for f in multipart.FAMILIES if f.loss is not None]
NAMED = [f for f in multipart.FAMILIES if f.loss is None]


def _needs(family) -> None:
    pytest.importorskip(family.library)


def ids_of(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def group_ids(model: nn.Module, fb: fz.Freezable, name: str) -> set[int]:
    return {id(p) for _, p in fb.freeze_group(name).named_parameters(model)}


@pytest.mark.parametrize("family", TINY, ids=lambda f: f"{f.library}/{f.name}")
def test_every_check_of_the_family_is_right(family):
    """Attributes, a model inside a part read by its own library, forward order per part, nothing across two parts,
    the library's own freeze and lock functions: all right (none absent, none wrong)."""
    _needs(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checks = multipart.check_family(family)
    assert checks and all(c.verdict == "right" for c in checks), report(multipart.rows(checks))


@pytest.mark.slow
@pytest.mark.parametrize("family", NAMED, ids=lambda f: f"{f.library}/{f.name}")
def test_the_lock_presets_of_open_clip_s_own_configs(family):
    """RN50, ViT-B-32, a timm tower (convnext_tiny), ViT-B-16-SigLIP built by open_clip.create_model on the meta
    device: the lock presets freeze what open_clip's own lock functions freeze, for several N."""
    _needs(family)
    checks = multipart.check_family(family)
    assert all(c.verdict == "right" for c in checks), report(multipart.rows(checks))


@pytest.mark.parametrize("family", TINY, ids=lambda f: f"{f.library}/{f.name}")
def test_freeze_everything_but_x_trains_x_alone(family):
    """``fz.freeze(model, trainable=X)`` then a training step: the frozen parameters and BatchNorm statistics stay
    bit-identical in ``train()``, each group of X changes."""
    _needs(family)
    model = family.build()
    fz.freeze(model, trainable=list(family.trainable)).train()
    name_of = {id(p): n for n, p in model.named_parameters()}  # a tied parameter by its first name
    trained = {name_of[id(p)] for group in family.trainable
               for _, p in model.freeze_group(group).named_parameters(model)}
    assert trained and {n for n, p in model.named_parameters() if p.requires_grad} == trained
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    frozen_stats = {n for n, m in norms.items() if not any(p.requires_grad for p in m.parameters())}
    assert frozen_stats or not norms  # where the model has BatchNorm, some of it is frozen here
    before = snapshot(model)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        family.loss(family.run(model)).backward()
    optimizer.step()
    moved = changed(before, model)
    assert not {n for n in moved if n not in trained and n in dict(model.named_parameters())}
    assert not {n for n in moved if n.rpartition(".")[0] in frozen_stats}  # frozen BatchNorm: statistics unchanged
    for group in family.trainable:
        assert {name_of[id(p)] for _, p in model.freeze_group(group).named_parameters(model)} & moved, group


# -- names: one stack plain, several prefixed -----------------------------------------------------------


def test_clip_groups_are_named_per_tower_and_the_projections_apart():
    clip = multipart.clip()
    groups = detect_groups(clip)
    assert not {"stem", "stage1", "block1", "head"} & set(groups)  # two stacks: no plain names
    assert {"vision_model.stem", "vision_model.stage2", "vision_model.block2", "text_model.block1"} <= set(groups)
    for piece in ("visual_projection", "text_projection", "logit_scale"):
        assert groups[piece] == (piece,)
        assert not any(piece in members for g, members in groups.items() if g != piece)


def test_freeze_to_a_tower_s_group_walks_that_tower_alone():
    """The reported bug: freeze_to("stage2") froze the text tower, the vision embeddings and logit_scale, and left every
    vision layer trainable. Now a tower's name walks that tower."""
    clip = multipart.clip()
    fb = fz.FrozenBackbone(clip).unfreeze().freeze("text_model").freeze_to("vision_model.block1")
    frozen = {id(p) for p in clip.parameters() if not p.requires_grad}
    vision = clip.vision_model
    assert frozen == ids_of(clip.text_model) | ids_of(vision.embeddings) | ids_of(vision.pre_layrnorm) | ids_of(
        vision.encoder.layers[0])
    fb.freeze_to("vision_model.stem")  # further back: block1 trains again, the text tower stays frozen
    assert all(p.requires_grad for p in vision.encoder.layers[0].parameters())
    assert not any(p.requires_grad for p in clip.text_model.parameters())
    assert clip.logit_scale.requires_grad


def test_layer_decay_ranks_each_tower_from_its_top():
    fb = fz.FrozenBackbone(multipart.clip()).unfreeze()
    scale = {g["name"]: g["lr_scale"] for g in fb.param_groups(1.0, layer_decay=0.5)}
    assert scale["vision_model.stem"] == scale["text_model.stem"] == 0.125
    assert scale["vision_model.block2"] == scale["text_model.block2"] == 0.5
    assert scale["visual_projection"] == scale["logit_scale.no_decay"] == 1.0


def test_an_unfreeze_schedule_takes_the_names_of_parts():
    clip = multipart.clip()
    fb = fz.FrozenBackbone(clip, trainable=["visual_projection", "text_projection"])
    schedule = fz.UnfreezeSchedule(fb, {1: ["vision_model.stage2"], 2: ["text_model"]})
    schedule.step(1)
    assert all(p.requires_grad for p in clip.vision_model.encoder.layers[1].parameters())
    assert all(p.requires_grad for p in clip.vision_model.post_layernorm.parameters())
    assert not any(p.requires_grad for p in clip.text_model.parameters())
    schedule.step(2)
    assert all(p.requires_grad for p in clip.text_model.parameters())


def test_summary_and_repr_fold_each_tower_s_blocks():
    fb = fz.FrozenBackbone(multipart.clip(), trainable=["vision_model.block2"])
    assert "block" not in repr(fb)
    rows = [line.split()[0] for line in fb.freeze_summary().splitlines()[2:-3]]
    assert "vision_model.stage2" in rows and not any("block" in r for r in rows)
    assert "vision_model.block1" in fb.freeze_summary(blocks=True)


def test_the_command_line_shows_a_hugging_face_model_of_several_parts(capsys):
    from freezable.__main__ import main

    assert main(["show", "transformers/CLIPModel", "--trainable", "vision_model.block12", "visual_projection"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CLIPModel built from transformers")
    assert "vision_model.block1 ... vision_model.block12: 12 blocks inside the stages" in out
    assert "text_model.block1 ... text_model.block12: 12 blocks" in out
    assert "visual_projection: visual_projection" in out


# -- each part as its library means it --------------------------------------------------------------------


def test_detr_backbone_is_the_model_s_backbone_with_timm_s_stages_inside():
    detr = multipart.detr_timm()
    groups = detect_groups(detr)
    fb = fz.freezable(detr)
    assert group_ids(detr, fb, "backbone") == ids_of(detr.model.backbone)
    timm_groups = detect_groups(detr.model.backbone.model)
    for name in ("stem", "stage1", "stage4", "block1"):
        assert groups[f"backbone.{name}"] == tuple(f"model.backbone.model.{m}" for m in timm_groups[name])
    assert group_ids(detr, fb, "head") == ids_of(detr.class_labels_classifier) | ids_of(detr.bbox_predictor)
    assert group_ids(detr, fb, "encoder") == ids_of(detr.model.encoder)


def test_hf_resnet_blocks_are_bottlenecks_and_stages_follow_the_config_depths():
    config = transformers.ResNetConfig(depths=[2, 1, 3, 1], hidden_sizes=[8, 8, 16, 16], embedding_size=8,
                                       num_labels=3)
    with torch.device("meta"):
        model = transformers.ResNetForImageClassification(config)
    groups = detect_groups(model)
    stages = model.resnet.encoder.stages
    fb = fz.freezable(model)
    assert group_ids(model, fb, "stem") == ids_of(model.resnet.embedder)
    for i, stage in enumerate(stages, start=1):
        assert group_ids(model, fb, f"stage{i}") == ids_of(stage)
    bottlenecks = [layer for stage in stages for layer in stage.layers]
    assert [group_ids(model, fb, f"block{i}") for i in range(1, 8)] == [ids_of(b) for b in bottlenecks]
    assert "block8" not in groups


def test_sam_head_is_the_mask_decoder_and_the_prompt_encoder_a_group_of_its_own():
    sam = multipart.sam()
    fb = fz.FrozenBackbone(sam, trainable=["head"])
    assert {n for n, _ in fb.named_trainable_parameters()} == {f"backbone.mask_decoder.{n}"
                                                               for n, _ in sam.mask_decoder.named_parameters()}
    assert group_ids(sam, fb, "prompt_encoder") == ids_of(sam.prompt_encoder)


@pytest.mark.parametrize("stable", [False, True], ids=["group-norm", "stable-layer-norm"])
def test_wav2vec2_feature_encoder_group_and_final_norm(stable):
    model = multipart.wav2vec2(stable)()
    groups = detect_groups(model)
    assert groups["feature_extractor"] == ("wav2vec2.feature_extractor",)
    assert [g for g in groups if g.startswith("feature_extractor.block")] == [
        "feature_extractor.block1", "feature_extractor.block2", "feature_extractor.block3"]
    last, stem = groups["encoder.block2"], groups["encoder.stem"]
    # pre-norm (stable) layout: the encoder's layer_norm runs after the layers; post-norm: before them
    assert ("wav2vec2.encoder.layer_norm" in last) is stable and ("wav2vec2.encoder.layer_norm" in stem) is not stable
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    model.freeze_feature_encoder()
    theirs = {n for n, p in model.named_parameters() if not p.requires_grad} - frozen
    assert theirs == {n for n, _ in fz.freezable(model).freeze_group("feature_extractor").named_parameters(model)}


def test_a_removed_classifier_is_no_group_inside_a_user_s_model_either():
    """The README's recipe (fc = nn.Identity(), a head outside): no empty head group, here or nested."""
    import torchvision

    resnet = torchvision.models.resnet18()
    resnet.fc = nn.Identity()

    class EncoderDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = resnet, nn.Linear(512, 3)

    assert "head" not in detect_groups(resnet)
    groups = detect_groups(EncoderDecoder())
    assert "head" not in groups and groups["backbone"] == ("encoder.conv1", "encoder.bn1", "encoder.layer1",
                                                             "encoder.layer2", "encoder.layer3", "encoder.layer4")


def test_the_sweep_prints_figures_per_library_and_exits_0_when_nothing_is_wrong(capsys, monkeypatch):
    monkeypatch.setattr(multipart, "FAMILIES", [f for f in multipart.FAMILIES if f.name == "SiglipModel"])
    assert sweep_main(["multipart", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("transformers: 1 right, 0 absent, 0 wrong\n") and "  transformers: " in out
    assert " checks: " in out and out.count(" 0 wrong") == 2  # a row per model, and its checks counted
    wrong = multipart.Check("transformers", "X", "forward order", "wrong", "detail")
    absent = multipart.Check("transformers", "X", "head == lm_head", "absent")
    assert report(multipart.rows([wrong, absent])) == (
        "transformers: 0 right, 0 absent, 1 wrong\n  wrong: X: forward order: detail; head == lm_head")


def test_importing_freezable_imports_no_open_clip():
    import subprocess

    code = "import sys, freezable; print('open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
