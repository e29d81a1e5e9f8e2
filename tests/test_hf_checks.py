"""Tied parameters and reentrant gradient checkpointing around frozen parts of Hugging Face models."""

from __future__ import annotations

import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

import _hf_models  # noqa: E402

import freezable as fz  # noqa: E402


def test_gpt2_tied_lm_head_is_marked_in_the_summary_and_reported_by_check():
    gpt2 = _hf_models.gpt2()
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight  # the oracle: one tensor
    fb = fz.FrozenBackbone(gpt2, trainable=["head"])
    assert gpt2.lm_head.weight.requires_grad  # the later call (unfreeze head) won: the frozen stem's wte trains
    summary = fb.freeze_summary()
    assert "tied" in summary and "'transformer.wte.weight'" in summary and "'lm_head.weight'" in summary
    problems = [p for p in fz.check(fb).problems if "tied" in p]
    assert len(problems) == 1 and "'transformer.wte.weight'" in problems[0] and "'lm_head.weight'" in problems[0]
    fb.unfreeze()  # nothing frozen: nothing to report
    assert fz.check(fb).ok and "tied" not in fb.freeze_summary()


def checkpointed_bert(reentrant: bool):
    bert = _hf_models.bert(layers=2)
    bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    # transformers 5 hooks the input embeddings of text models when checkpointing starts; models whose main
    # input is not input_ids (ViT, audio) and older versions get no such hook: remove it to see the failure
    bert.disable_input_require_grads()
    fb = fz.FrozenBackbone(bert, trainable=["block1", "block2", "head"]).train()
    return bert, fb


def backward(fb):
    ids = torch.randint(0, 100, (2, 8))
    fb(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()


@pytest.mark.filterwarnings("ignore")
def test_reentrant_checkpointing_after_a_frozen_stem_gives_no_gradient_and_is_reported():
    bert, fb = checkpointed_bert(reentrant=True)
    backward(fb)
    layer = bert.bert.encoder.layer[0].attention.self.query.weight
    assert layer.requires_grad and layer.grad is None  # the silent failure itself
    assert bert.classifier.weight.grad is not None
    problems = [p for p in fz.check(fb).problems if "checkpoint" in p]
    assert len(problems) == 1 and "use_reentrant=False" in problems[0] and "enable_input_require_grads" in problems[0]

    bert.enable_input_require_grads()  # fix 1
    assert fz.check(fb).ok
    fb.zero_grad()
    backward(fb)
    assert layer.grad is not None


def test_non_reentrant_checkpointing_is_clean_and_trains():
    bert, fb = checkpointed_bert(reentrant=False)  # fix 2
    assert fz.check(fb).ok
    backward(fb)
    assert bert.bert.encoder.layer[0].attention.self.query.weight.grad is not None


def test_wrapper_forward_shows_the_backbone_signature():
    fb = fz.FrozenBackbone(_hf_models.bert())
    assert list(inspect.signature(fb.forward).parameters) == list(inspect.signature(fb.backbone.forward).parameters)
    assert "input_ids" in inspect.signature(fb.forward).parameters


def test_save_pretrained_writes_what_the_plain_class_loads(tmp_path):
    bert = _hf_models.bert()
    fb = fz.FrozenBackbone(bert, trainable=["head"])
    fb.save_pretrained(tmp_path)
    loaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path)
    assert set(loaded.state_dict()) == set(bert.state_dict())
    assert not any(k.startswith("backbone.") for k in loaded.state_dict())
    assert all(torch.equal(v, bert.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_generate_works_on_a_wrapped_causal_lm():
    gpt2 = _hf_models.gpt2()
    fb = fz.FrozenBackbone(gpt2, trainable=["block2"])
    ids = torch.tensor([[1, 2, 3]])
    out = fb.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(out, gpt2.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0))
    assert out.shape == (1, 6)
