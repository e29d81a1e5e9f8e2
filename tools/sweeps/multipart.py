"""Groups of models of several parts, checked against each library's own notion: one tiny model per family.

Hugging Face multi-part families (two towers, vision-language, BLIP and BLIP-2, DETR and relatives, SAM,
encoder-decoder, Wav2Vec2 in both layouts) and open_clip (its own ViT and ModifiedResNet, a timm tower,
CustomTextCLIP), each built tiny with random weights on the CPU, are checked against:

* the library's attributes: each named group holds exactly the parameters of the attribute it stands for
  (``vision_model``, DETR's ``model.backbone``, SAM's ``mask_decoder`` as ``head``); a model inside a part
  (DETR's timm backbone, open_clip's timm trunk) has the groups its own library's detection gives it alone;
* the order a real forward runs each part's groups (forward hooks; ``tools/oracles/order.py``,
  ``part_forward_problems``);
* no stem, stage or block straddles two parts, and no model-level piece sits inside one
  (``tools/oracles/parts.py``, ``straddle_problems``);
* the library's own freeze or lock function (``freeze_backbone()``, ``freeze_feature_encoder()``,
  ``lock_image_tower(N)``, ``lock_text_tower(N)``) freezes exactly the preset's or group's parameters.

Each check is **right**, **absent** (the group it needs was not detected) or **wrong**; a model is wrong when any
of its checks is, else absent when any is. Reported per library, every absent or wrong check in words.

    python tools/sweep.py multipart
    python tools/sweep.py multipart --libraries open_clip
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from freezable.detect import detect_groups
from tools.oracles.groups import attr_ids, ids
from tools.oracles.order import part_forward_problems
from tools.oracles.parts import same_frozen_problems, straddle_problems

from .report import Row, row

__all__ = ["Family", "FAMILIES", "Check", "check_family", "sweep", "rows", "notes"]

# -- the families -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One tiny model of a family and what its library says about it."""

    library: str  # "transformers" or "open_clip"
    name: str  # the model class, and the variant
    build: Callable[[], nn.Module]  # a tiny model, random weights, CPU
    run: Callable[[nn.Module], Any]  # a real forward on a real input
    attributes: dict[str, tuple[str, ...]]  # group -> the attributes (module or parameter names) it must equal
    inner: dict[str, str] = field(default_factory=dict)  # part -> the attribute holding a model its own library knows
    own: tuple[tuple[str, Callable[[nn.Module], Any], str], ...] = ()  # (label, library's freeze, preset or group)
    trainable: tuple[str, ...] = ("head",)  # what the freeze-everything-but-X step trains
    loss: Callable[[Any], torch.Tensor] | None = None  # a scalar from the forward's output, for that step


def _t() -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


_SIZES = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2)
_TEXT = dict(_SIZES, vocab_size=100, max_position_embeddings=16)
_VISION = dict(_SIZES, image_size=32, patch_size=8)


def _seeded(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make()
    return build


def _ids(n: int = 8, batch: int = 2) -> torch.Tensor:
    return torch.randint(1, 90, (batch, n), generator=torch.Generator().manual_seed(0))


def _pixels(size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def clip() -> nn.Module:
    t = _t()
    return t.CLIPModel(t.CLIPConfig(text_config=_TEXT, vision_config=_VISION, projection_dim=16))


def siglip() -> nn.Module:
    t = _t()
    return t.SiglipModel(t.SiglipConfig(text_config=_TEXT, vision_config=_VISION))


def llava() -> nn.Module:
    t = _t()
    vision = dict(_VISION, model_type="clip_vision_model")
    text = dict(_TEXT, model_type="llama", num_key_value_heads=2)
    return t.LlavaForConditionalGeneration(t.LlavaConfig(vision_config=vision, text_config=text, image_token_index=99))


def _llava_inputs() -> dict[str, torch.Tensor]:
    ids = torch.cat([torch.full((2, 16), 99), _ids(4)], dim=1)  # 16 image tokens: (32 / 8) ** 2 patches
    return {"input_ids": ids, "pixel_values": _pixels()}


def blip() -> nn.Module:
    t = _t()
    return t.BlipForImageTextRetrieval(t.BlipConfig(text_config=dict(_SIZES, vocab_size=100), vision_config=_VISION,
                                                    projection_dim=16))


def blip2() -> nn.Module:
    t = _t()
    qformer = dict(_SIZES, vocab_size=100, encoder_hidden_size=32, cross_attention_frequency=1)
    opt = dict(model_type="opt", hidden_size=32, num_attention_heads=2, ffn_dim=64, num_hidden_layers=2, vocab_size=100,
               word_embed_proj_dim=32, max_position_embeddings=64)
    return t.Blip2ForConditionalGeneration(t.Blip2Config(vision_config=_VISION, qformer_config=qformer, text_config=opt,
                                                         num_query_tokens=4, image_token_index=99))


def _blip2_inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.cat([torch.full((2, 4), 99), _ids(5)], dim=1), "pixel_values": _pixels()}


_DETR = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
             encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5, use_pretrained_backbone=False, num_labels=3)


def detr_timm() -> nn.Module:
    t = _t()
    return t.DetrForObjectDetection(t.DetrConfig(use_timm_backbone=True, backbone="resnet18", **_DETR))


def detr_hf_resnet() -> nn.Module:
    t = _t()
    backbone = t.ResNetConfig(depths=[2, 1, 1, 1], hidden_sizes=[8, 8, 16, 16], embedding_size=8,
                              out_features=["stage4"])
    return t.DetrForObjectDetection(t.DetrConfig(use_timm_backbone=False, backbone_config=backbone, **_DETR))


def conditional_detr() -> nn.Module:
    t = _t()
    return t.ConditionalDetrForObjectDetection(t.ConditionalDetrConfig(use_timm_backbone=True, backbone="resnet18",
                                                                       **_DETR))


def deformable_detr() -> nn.Module:
    t = _t()
    sizes = {k: v for k, v in _DETR.items() if k != "num_queries"}
    config = t.DeformableDetrConfig(use_timm_backbone=True, backbone="resnet18", num_queries=5,
                                    encoder_n_points=2, decoder_n_points=2, **sizes)
    return t.DeformableDetrForObjectDetection(config)


def _detr_inputs() -> dict[str, torch.Tensor]:
    return {"pixel_values": _pixels(64)}


def sam() -> nn.Module:
    t = _t()
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16,
                  output_channels=16, mlp_dim=32, global_attn_indexes=[1], window_size=2)
    vision["num_pos_feats"] = 8  # the shared positional embedding: 2 x 8 = the 16 channels of the embeddings
    prompt = dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4)
    decoder = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16)
    return t.SamModel(t.SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))


def _sam_inputs() -> dict[str, torch.Tensor]:
    points = torch.rand(2, 1, 1, 2, generator=torch.Generator().manual_seed(2)) * 64
    return {"pixel_values": _pixels(64), "input_points": points}


def t5() -> nn.Module:
    t = _t()
    return t.T5ForSequenceClassification(t.T5Config(num_layers=2, d_model=32, d_ff=64, d_kv=16, num_heads=2,
                                                    vocab_size=100, decoder_start_token_id=0, pad_token_id=0))


def bart() -> nn.Module:
    t = _t()
    return t.BartForSequenceClassification(t.BartConfig(
        encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=100, max_position_embeddings=32, eos_token_id=2))


def _with_eos(eos: int) -> Callable[[], dict[str, torch.Tensor]]:
    def inputs() -> dict[str, torch.Tensor]:
        ids = _ids()
        ids[:, -1] = eos  # the classification head reads the last eos token
        return {"input_ids": ids}
    return inputs


def wav2vec2(stable: bool) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        t = _t()
        return t.Wav2Vec2ForCTC(t.Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(8, 8, 8),
            conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
            do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group", vocab_size=20))
    return make


def _audio() -> dict[str, torch.Tensor]:
    return {"input_values": torch.randn(2, 800, generator=torch.Generator().manual_seed(3))}


def _call(inputs: Callable[[], dict[str, torch.Tensor]]) -> Callable[[nn.Module], Any]:
    return lambda model: model(**inputs())


def _text_image(size: int = 32) -> Callable[[nn.Module], Any]:
    return lambda model: model(input_ids=_ids(), pixel_values=_pixels(size))


def _sum(output: Any) -> torch.Tensor:
    """A scalar that every floating output of a forward feeds (the loss of the training step)."""
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else [output]
    total = torch.zeros(())
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            total = total + value.float().mean()
        elif isinstance(value, (dict, tuple, list)):
            total = total + _sum(value)
    return total


def _freeze_backbone(model: nn.Module) -> None:
    model.model.freeze_backbone()


# -- open_clip ----------------------------------------------------------------------------------------


def _open_clip() -> Any:
    import open_clip

    return open_clip


_OC_TEXT = dict(context_length=8, vocab_size=100, width=16, heads=2, layers=3)


def oc_vit() -> nn.Module:
    vision = dict(layers=3, width=16, head_width=8, patch_size=8, image_size=32)
    return _open_clip().CLIP(embed_dim=16, vision_cfg=vision, text_cfg=_OC_TEXT)


def oc_resnet() -> nn.Module:
    return _open_clip().CLIP(embed_dim=16, vision_cfg=dict(layers=(1, 2, 1, 1), width=8, head_width=8, image_size=64),
                             text_cfg=_OC_TEXT)


def oc_timm() -> nn.Module:
    vision = dict(timm_model_name="test_resnet", timm_model_pretrained=False, timm_pool="avg", timm_proj="linear",
                  image_size=32)
    return _open_clip().CLIP(embed_dim=16, vision_cfg=vision, text_cfg=_OC_TEXT)


def oc_custom_text() -> nn.Module:
    vision = dict(timm_model_name="test_vit", timm_model_pretrained=False, timm_pool="map", timm_proj="none",
                  image_size=32)
    text = dict(_OC_TEXT, width=64, proj_bias=True)
    return _open_clip().CustomTextCLIP(embed_dim=64, vision_cfg=vision, text_cfg=text, init_logit_bias=-10.0)


def _oc_run(size: int) -> Callable[[nn.Module], Any]:
    return lambda model: model(_pixels(size), _ids())


def _locks(image: Sequence[int], text: Sequence[int]) -> tuple[tuple[str, Callable[[nn.Module], Any], str], ...]:
    found = [(f"lock_image_tower({n})", lambda m, n=n: m.lock_image_tower(unlocked_groups=n),
              f"open_clip.lock_image_tower_{n}") for n in image]
    found += [(f"lock_text_tower({n})", lambda m, n=n: m.lock_text_tower(unlocked_layers=n),
               f"open_clip.lock_text_tower_{n}") for n in text]
    return tuple(found)


_WAV2VEC2 = {"feature_extractor": ("wav2vec2.feature_extractor",),
             "feature_projection": ("wav2vec2.feature_projection",), "encoder": ("wav2vec2.encoder",),
             "head": ("lm_head",), "backbone": ("wav2vec2",)}
_CLIP_TEXT = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


def _named_open_clip(name: str) -> Callable[[], nn.Module]:
    """An open_clip model by its config name, on the meta device (for the lock oracles: no forward)."""
    def make() -> nn.Module:
        return _open_clip().create_model(name, pretrained=None, device="meta")
    return make


FAMILIES: list[Family] = [
    Family("transformers", "CLIPModel", _seeded(clip), _text_image(),
           {"text_model": ("text_model",), "vision_model": ("vision_model",),
            "visual_projection": ("visual_projection",), "text_projection": ("text_projection",),
            "logit_scale": ("logit_scale",)},
           trainable=("visual_projection", "text_projection"), loss=lambda out: out.logits_per_image.mean()),
    Family("transformers", "SiglipModel", _seeded(siglip), _text_image(),
           {"text_model": ("text_model",), "vision_model": ("vision_model",), "logit_scale": ("logit_scale",),
            "logit_bias": ("logit_bias",)},
           trainable=("vision_model.block2", "logit_scale"), loss=lambda out: out.logits_per_image.mean()),
    Family("transformers", "LlavaForConditionalGeneration", _seeded(llava), _call(_llava_inputs),
           {"vision_tower": ("model.vision_tower",), "multi_modal_projector": ("model.multi_modal_projector",),
            "language_model": ("model.language_model",), "head": ("lm_head",), "backbone": ("model",)},
           trainable=("multi_modal_projector",), loss=lambda out: out.logits.mean()),
    Family("transformers", "BlipForImageTextRetrieval", _seeded(blip), _text_image(),
           {"vision_model": ("vision_model",), "text_encoder": ("text_encoder",), "vision_proj": ("vision_proj",),
            "text_proj": ("text_proj",), "itm_head": ("itm_head",)},
           trainable=("itm_head",), loss=lambda out: out.itm_score.mean()),
    Family("transformers", "Blip2ForConditionalGeneration", _seeded(blip2), _call(_blip2_inputs),
           {"vision_model": ("vision_model",), "qformer": ("qformer",), "language_projection": ("language_projection",),
            "language_model": ("language_model",), "query_tokens": ("query_tokens",),
            "head": ("language_model.lm_head",)},
           trainable=("qformer", "language_projection", "query_tokens"), loss=lambda out: out.logits.mean()),
    Family("transformers", "DetrForObjectDetection (timm backbone)", _seeded(detr_timm), _call(_detr_inputs),
           {"backbone": ("model.backbone",), "encoder": ("model.encoder",), "decoder": ("model.decoder",),
            "head": ("class_labels_classifier", "bbox_predictor"), "input_projection": ("model.input_projection",),
            "query_position_embeddings": ("model.query_position_embeddings",)},
           inner={"backbone": "model.backbone.model"}, own=(("freeze_backbone()", _freeze_backbone, "backbone"),),
           loss=lambda out: out.logits.mean() + out.pred_boxes.mean()),
    Family("transformers", "DetrForObjectDetection (HF ResNet backbone)", _seeded(detr_hf_resnet), _call(_detr_inputs),
           {"backbone": ("model.backbone",), "encoder": ("model.encoder",), "decoder": ("model.decoder",),
            "head": ("class_labels_classifier", "bbox_predictor")},
           inner={"backbone": "model.backbone.model"}, own=(("freeze_backbone()", _freeze_backbone, "backbone"),),
           trainable=("encoder", "head"), loss=lambda out: out.logits.mean() + out.pred_boxes.mean()),
    Family("transformers", "ConditionalDetrForObjectDetection", _seeded(conditional_detr), _call(_detr_inputs),
           {"backbone": ("model.backbone",), "encoder": ("model.encoder",), "decoder": ("model.decoder",),
            "head": ("class_labels_classifier", "bbox_predictor")},
           inner={"backbone": "model.backbone.model"}, own=(("freeze_backbone()", _freeze_backbone, "backbone"),),
           loss=lambda out: out.logits.mean() + out.pred_boxes.mean()),
    Family("transformers", "DeformableDetrForObjectDetection", _seeded(deformable_detr), _call(_detr_inputs),
           {"backbone": ("model.backbone",), "encoder": ("model.encoder",), "decoder": ("model.decoder",)},
           inner={"backbone": "model.backbone.model"}, own=(("freeze_backbone()", _freeze_backbone, "backbone"),),
           loss=lambda out: out.logits.mean() + out.pred_boxes.mean()),
    Family("transformers", "SamModel", _seeded(sam), _call(_sam_inputs),
           {"head": ("mask_decoder",), "prompt_encoder": ("prompt_encoder",), "vision_encoder": ("vision_encoder",),
            "backbone": ("vision_encoder", "prompt_encoder", "shared_image_embedding")},
           loss=lambda out: out.pred_masks.mean() + out.iou_scores.mean()),
    Family("transformers", "T5ForSequenceClassification", _seeded(t5), _call(_with_eos(1)),
           {"encoder": ("transformer.encoder",), "decoder": ("transformer.decoder",), "head": ("classification_head",),
            "backbone": ("transformer",)},
           trainable=("decoder", "head"), loss=lambda out: out.logits.mean()),
    Family("transformers", "BartForSequenceClassification", _seeded(bart), _call(_with_eos(2)),
           {"encoder": ("model.encoder",), "decoder": ("model.decoder",), "head": ("classification_head",),
            "backbone": ("model",)},
           loss=lambda out: out.logits.mean()),
    Family("transformers", "Wav2Vec2ForCTC (group norm)", _seeded(wav2vec2(False)), _call(_audio),
           _WAV2VEC2,
           own=(("freeze_feature_encoder()", lambda m: m.freeze_feature_encoder(), "feature_extractor"),),
           trainable=("encoder", "head"), loss=lambda out: out.logits.mean()),
    Family("transformers", "Wav2Vec2ForCTC (stable layer norm)", _seeded(wav2vec2(True)), _call(_audio),
           _WAV2VEC2,
           own=(("freeze_feature_encoder()", lambda m: m.freeze_feature_encoder(), "feature_extractor"),),
           trainable=("encoder", "head"), loss=lambda out: out.logits.mean()),
    Family("open_clip", "CLIP (VisionTransformer)", _seeded(oc_vit), _oc_run(32),
           {"visual": ("visual",), "text": _CLIP_TEXT, "logit_scale": ("logit_scale",), "visual.head": ("visual.proj",),
            "text.head": ("text_projection",)},
           own=_locks(range(0, 7), range(0, 7)), trainable=("visual.head", "text.head"), loss=_sum),
    Family("open_clip", "CLIP (ModifiedResNet)", _seeded(oc_resnet), _oc_run(64),
           {"visual": ("visual",), "text": _CLIP_TEXT, "logit_scale": ("logit_scale",),
            "visual.head": ("visual.attnpool",)},
           own=_locks([0], range(0, 3)), trainable=("visual.head", "text"), loss=_sum),
    Family("open_clip", "CLIP (timm tower)", _seeded(oc_timm), _oc_run(32),
           {"visual": ("visual",), "text": _CLIP_TEXT, "logit_scale": ("logit_scale",),
            "visual.head": ("visual.head",)},
           inner={"visual": "visual.trunk"}, own=_locks(range(0, 7), [0, 2]), trainable=("visual.head", "text.head"),
           loss=_sum),
    Family("open_clip", "CustomTextCLIP (timm tower)", _seeded(oc_custom_text), _oc_run(32),
           {"visual": ("visual",), "text": ("text",), "logit_scale": ("logit_scale",), "logit_bias": ("logit_bias",),
            "text.head": ("text.text_projection",)},
           inner={"visual": "visual.trunk"}, own=_locks(range(0, 5), range(0, 6)),
           trainable=("text.head", "logit_bias"), loss=_sum),
    *(Family("open_clip", f"{name} (meta, lock oracles only)", _named_open_clip(name), lambda model: None,
             {"visual": ("visual",), "logit_scale": ("logit_scale",)}, own=_locks(image, text))
      for name, image, text in (("RN50", [0], [0, 1, 5]), ("ViT-B-32", [0, 1, 2, 6], [0, 1, 3, 6]),
                                ("convnext_tiny", [0, 1, 3], [0, 2]), ("ViT-B-16-SigLIP", [0, 1, 4], [0, 1, 2]))),
]


# -- the checks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One check on one model: right, absent or wrong."""

    library: str
    model: str
    check: str  # what was checked ("vision_model == model.vision_model", "forward order", "lock_image_tower(2)")
    verdict: str  # "right", "absent" or "wrong"
    detail: str = ""


def check_family(family: Family) -> list[Check]:
    """Every check of one family (never raises: a failure to build or run is a wrong check)."""
    def verdict(check: str, problems: list[str]) -> Check:
        return Check(family.library, family.name, check, "wrong" if problems else "right", "; ".join(problems))

    try:
        model = family.build()
        groups = detect_groups(model)
    except Exception as e:  # noqa: BLE001 - a model that does not build or detect is a finding
        return [Check(family.library, family.name, "build and detect", "wrong", f"{type(e).__name__}: {e}")]
    checks = []
    for group, attributes in family.attributes.items():
        label = f"{group} == {' + '.join(attributes)}"
        if group not in groups:
            checks.append(Check(family.library, family.name, label, "absent"))
        else:
            equal = ids(model, groups, group) == attr_ids(model, *attributes)
            checks.append(verdict(label, [] if equal else [f"{group} holds {groups[group]}"]))
    for part, attribute in family.inner.items():
        theirs = detect_groups(model.get_submodule(attribute))
        staged = {g: m for g, m in theirs.items() if g not in ("head", "backbone")}
        ours = {g[len(part) + 1:]: m for g, m in groups.items()
                if g.startswith(part + ".") and g[len(part) + 1:] in staged}
        prefix = attribute + "."
        same = bool(staged) and ours == {g: tuple(prefix + x for x in m) for g, m in staged.items()}
        checks.append(verdict(f"{part}.* == the groups of {type(model.get_submodule(attribute)).__name__} alone",
                              [] if same else [f"ours {sorted(ours)}, its own {sorted(staged)}"]))
    if family.loss is not None:
        try:
            problems = part_forward_problems(model, groups, family.run)
            checks.append(verdict("forward order of each part", problems))
        except Exception as e:  # noqa: BLE001
            checks.append(Check(family.library, family.name, "forward order of each part", "wrong",
                                f"the forward failed: {type(e).__name__}: {e}"))
    checks.append(verdict("no stage or block across two parts", straddle_problems(model, groups)))
    for label, theirs, ours in family.own:
        present = ours in groups or ours.startswith("open_clip.")
        if not present:
            checks.append(Check(family.library, family.name, f"{label} == {ours}", "absent"))
        else:
            problems = same_frozen_problems(family.build, theirs, ours, label)
            checks.append(verdict(f"{label} == {ours}", problems))
    return checks


def sweep(families: Sequence[Family] | None = None, libraries: Sequence[str] | None = None) -> list[Check]:
    """:func:`check_family` over the families (default: all), of the named libraries (default: every one installed)."""
    found = []
    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip logs a line per model built without pretrained weights
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for family in FAMILIES if families is None else families:
                if libraries is not None and family.library not in libraries:
                    continue
                if importlib.util.find_spec(family.library) is None:
                    continue
                found += check_family(family)
    finally:
        logging.disable(quiet)
    return found


def rows(checks: Sequence[Check]) -> list[Row]:
    """A row per model: wrong when any of its checks is, else absent when any is; each miss ``check: detail``."""
    found = []
    for library, model in dict.fromkeys((c.library, c.model) for c in checks):
        mine = [c for c in checks if (c.library, c.model) == (library, model)]
        said = {v: [f"{c.check}{': ' + c.detail if c.detail else ''}" for c in mine if c.verdict == v]
                for v in ("absent", "wrong")}
        found.append(row(library, model, said["absent"], said["wrong"]))
    return found


def notes(checks: Sequence[Check]) -> list[str]:
    """The figures per library counted by check: ``transformers: 183 checks: 183 right, 0 absent, 0 wrong``."""
    found = []
    for library in dict.fromkeys(c.library for c in checks):
        mine = [c for c in checks if c.library == library]
        counts = ", ".join(f"{sum(c.verdict == v for c in mine)} {v}" for v in ("right", "absent", "wrong"))
        found.append(f"{library}: {len(mine)} checks: {counts}")
    return found
