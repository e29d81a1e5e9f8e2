"""Groups of Hugging Face models: read from what each model declares, checked against the model's own parts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import _hf_models  # noqa: E402

import freezable as fz  # noqa: E402
from tools.sweeps.hf import architectures, check_architecture  # noqa: E402
from freezable.detect import detect_groups  # noqa: E402
from freezable.detect.transformers import hf_groups  # noqa: E402


def params(model, names):
    modules = dict(model.named_modules())
    return {id(p) for n in names for p in (modules[n].parameters() if n in modules else [model.get_parameter(n)])}


def ids(module):
    return {id(p) for p in module.parameters()}


def test_bert_groups_are_its_embeddings_layers_pooler_and_classifier():
    bert = _hf_models.bert()
    groups = hf_groups(bert)
    assert params(bert, groups["stem"]) == ids(bert.bert.embeddings)
    for i, layer in enumerate(bert.bert.encoder.layer, start=1):
        assert params(bert, groups[f"block{i}"]) == ids(layer)
        assert params(bert, groups[f"stage{i}"]) == ids(layer)  # 4 layers: a stage each
    assert params(bert, groups["head"]) == ids(bert.classifier) | ids(bert.bert.pooler)
    assert params(bert, groups["backbone"]) == ids(bert.bert) - ids(bert.bert.pooler)
    assert detect_groups(bert) == groups  # FrozenBackbone and presets see the same


def test_stages_split_the_layers_evenly_and_a_final_norm_goes_with_the_last():
    gpt2 = _hf_models.gpt2(layers=8)
    groups = hf_groups(gpt2)
    assert [groups[f"stage{s}"][:2] for s in range(1, 5)] == [
        (f"transformer.h.{2 * s}", f"transformer.h.{2 * s + 1}") for s in range(4)]
    assert "transformer.ln_f" in groups["stage4"] and "transformer.ln_f" in groups["block8"]
    assert params(gpt2, groups["stem"]) == ids(gpt2.transformer.wte) | ids(gpt2.transformer.wpe)
    assert list(groups)[:6] == ["stem", "stage1", "stage2", "stage3", "stage4", "block1"]


def test_encoder_decoder_layers_are_named_apart_and_freeze_apart():
    t5 = _hf_models.t5()
    fb = fz.FrozenBackbone(t5, trainable=["decoder", "head"])
    assert {"encoder.block1", "encoder.block2", "decoder.block1", "decoder.block2", "encoder", "decoder"} <= set(
        fb.freeze_group_names)
    assert not {"stem", "block1", "encoder_block1"} & set(fb.freeze_group_names)  # two stacks: no plain names
    assert not any(p.requires_grad for p in t5.transformer.encoder.block.parameters())
    assert all(p.requires_grad for p in t5.transformer.decoder.block.parameters())
    fb.unfreeze("encoder.block2")
    assert all(p.requires_grad for p in t5.transformer.encoder.block[1].parameters())
    assert not any(p.requires_grad for p in t5.transformer.encoder.block[0].parameters())


def test_freeze_embeddings_and_first_two_layers_in_one_line():
    bert = _hf_models.bert()
    fb = fz.FrozenBackbone(bert).unfreeze().freeze_to("block2")
    assert fb.frozen_groups[:5] == ("stem", "stage1", "stage2", "block1", "block2")
    trainable = {n for n, _ in fb.named_trainable_parameters()}
    assert all(n.startswith(("backbone.bert.encoder.layer.2", "backbone.bert.encoder.layer.3", "backbone.bert.pooler",
                             "backbone.classifier")) for n in trainable)


def test_peft_lora_model_keeps_its_groups_and_checks_clean():
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(_hf_models.bert(), peft.LoraConfig(r=2, target_modules=["query", "value"],
                                                                   task_type="SEQ_CLS"))
    inner = hf_groups(lora.get_base_model())
    groups = hf_groups(lora)
    assert list(groups) == list(inner)
    assert groups["block1"] == ("base_model.model.bert.encoder.layer.0",)
    assert fz.check(lora).ok
    peft_trains = {"backbone." + n for n, p in lora.named_parameters() if p.requires_grad}  # PEFT's own choice
    assert any("lora_" in n for n in peft_trains) and any("modules_to_save" in n for n in peft_trains)
    with pytest.warns(fz.BuiltFrozenWarning, match=r"classifier\.original_module\.weight"):
        fb = fz.FrozenBackbone(lora, trainable=["*lora_*", "head"])
    # what PEFT built frozen (the base model, the classifier's original copy) stays frozen
    assert {n for n, _ in fb.named_trainable_parameters()} == peft_trains
    opt = torch.optim.AdamW(fb.trainable_parameters())
    assert fz.check(fb, opt).ok


def test_not_a_hugging_face_model_gets_none():
    assert hf_groups(torch.nn.Linear(2, 2)) is None


def test_importing_freezable_imports_no_transformers():
    code = "import sys, freezable; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


SAMPLE = ["BertForSequenceClassification", "LlamaForSequenceClassification", "BartForSequenceClassification",
          "ViTForImageClassification", "SwinForImageClassification", "ConvNextForImageClassification"]


@pytest.mark.parametrize("arch", [a for a in architectures() if a[2] in SAMPLE], ids=lambda a: a[2])
def test_sweep_sample_is_covered(arch):
    result = check_architecture(*arch)
    assert result.covered, result.reason
    assert "head" in result.groups and "backbone" in result.groups


def test_a_wrapper_around_a_timm_model_gets_the_timm_models_groups():
    """TimmWrapper is a PreTrainedModel whose parts are a timm model's: named by timm's rules, not guessed."""
    timm = pytest.importorskip("timm")
    config = transformers.TimmWrapperConfig(architecture="resnet18", num_labels=3)
    with torch.device("meta"):
        wrapper = transformers.TimmWrapperForImageClassification(config)
    inner = detect_groups(timm.create_model("resnet18", num_classes=3, pretrained=False))
    assert detect_groups(wrapper) == {name: tuple(f"timm_model.{m}" for m in members) for name, members in inner.items()}
