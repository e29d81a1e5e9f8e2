"""open_clip: the two towers as parts, and presets equal to open_clip's own lock functions.

The family checks (attributes, forward order, the timm trunk's own groups, the lock oracles) run over tiny models
in ``test_multipart.py``; here: what a user of open_clip sees and the errors of presets that do not fit.
"""

from __future__ import annotations

import pytest
import torch

import freezable as fz
from freezable.detect import detect_groups
from freezable.errors import PresetError

open_clip = pytest.importorskip("open_clip")

TEXT = dict(context_length=8, vocab_size=100, width=16, heads=2, layers=3)


def vit(**text):
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=16, vision_cfg=dict(layers=3, width=16, head_width=8, patch_size=8, image_size=32),
                          text_cfg={**TEXT, **text})


def frozen(model) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def test_both_towers_have_stem_stages_blocks_and_head_and_the_text_tower_is_named_text_in_both_classes():
    clip = vit()
    custom = open_clip.CustomTextCLIP(embed_dim=16, vision_cfg=dict(layers=3, width=16, head_width=8, patch_size=8,
                                                                    image_size=32), text_cfg=TEXT)
    ours, theirs = detect_groups(clip), detect_groups(custom)
    assert [g for g in ours if g.startswith("text")] == [g for g in theirs if g.startswith("text")]
    assert ours["text.block3"] == ("transformer.resblocks.2", "ln_final")
    assert theirs["text.block3"] == ("text.transformer.resblocks.2", "text.ln_final")
    assert ours["visual.block3"] == ("visual.transformer.resblocks.2", "visual.ln_post")
    assert ours["visual.stem"] == ("visual.conv1", "visual.class_embedding", "visual.positional_embedding",
                                   "visual.patch_dropout", "visual.ln_pre")
    assert ours["visual.head"] == ("visual.proj",) and ours["text.head"] == ("text_projection",)
    assert ours["logit_scale"] == ("logit_scale",) and "stem" not in ours


@pytest.mark.parametrize("n", range(0, 7))
def test_lock_text_tower_preset_freezes_what_open_clip_freezes(n):
    theirs, ours = vit(), vit()
    theirs.lock_text_tower(unlocked_layers=n)
    fz.freeze(ours, preset=f"open_clip.lock_text_tower_{n}")
    assert frozen(ours) == frozen(theirs)


def test_lit_recipe_the_locked_image_tower_holds_its_batchnorm_in_eval():
    """LiT (lock_image_tower(0)) on a ModifiedResNet tower: the tower is frozen and its BatchNorm keeps its
    statistics in train(), which open_clip's lock leaves updating unless freeze_bn_stats=True."""
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=dict(layers=(1, 1, 1, 1), width=8, head_width=8, image_size=64),
                           text_cfg=TEXT)
    fz.freeze(model, preset="open_clip.lock_image_tower_0").train()
    stats = {n: b.clone() for n, b in model.visual.named_buffers()}
    model(torch.randn(2, 3, 64, 64), torch.randint(1, 90, (2, 8)))
    assert all(torch.equal(b, stats[n]) for n, b in model.visual.named_buffers())
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert all(p.requires_grad for p in model.transformer.parameters())


def test_a_preset_open_clip_cannot_apply_is_an_error_that_says_why():
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=dict(layers=(1, 1, 1, 1), width=8, head_width=8, image_size=64),
                           text_cfg=TEXT)
    with pytest.raises(PresetError, match="locks a ModifiedResNet image tower with unlocked_groups=0 only"):
        fz.freeze(model, preset="open_clip.lock_image_tower_1")
    assert not frozen(model)


def test_the_command_line_shows_an_open_clip_model(capsys):
    from freezable.__main__ import main

    assert main(["show", "open_clip/ViT-B-32", "--preset", "open_clip.lock_image_tower_2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ViT-B-32 built from open_clip")
    assert "visual.block1 ... visual.block12: 12 blocks inside the stages" in out
    assert "locked_image_tower" in out
