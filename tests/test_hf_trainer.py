"""FrozenBackbone in a real transformers Trainer, with GradualUnfreezing: 3 tiny epochs on the CPU."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import _hf_models  # noqa: E402

import freezable as fz  # noqa: E402
from freezable.errors import UnknownGroupError  # noqa: E402
from freezable.integrations.transformers import GradualUnfreezing  # noqa: E402


def dataset(n: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (n, 8), generator=g)
    # "sample_id" is a column BERT's forward does not take: the Trainer drops it only if it reads the signature
    return [{"input_ids": ids[i], "labels": int(ids[i, 0] % 2), "sample_id": i} for i in range(n)]


class Probe(transformers.TrainerCallback):
    """Records, before GradualUnfreezing steps, what block4 is at each epoch's start, and the stem's dropout mode."""

    def __init__(self, bert):
        self.bert, self.block4_at, self.dropout_training = bert, {}, []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.block4_at[round(state.epoch)] = self.bert.bert.encoder.layer[3].output.dense.weight.detach().clone()

    def on_step_end(self, args, state, control, **kwargs):
        self.dropout_training.append(self.bert.bert.embeddings.dropout.training)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_gradual_unfreezing_in_the_trainer(tmp_path):
    bert = _hf_models.bert()
    fb = fz.FrozenBackbone(bert, trainable=["head"])
    frozen = {g: snapshot(bert.get_submodule(n)) for g in ("stem", "block1", "block2", "block3")
              for n in fb.freeze_group(g).modules}
    head_before = snapshot(bert.classifier)
    probe = Probe(bert)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=4,
                                          learning_rate=1e-2, save_strategy="no", report_to=[], logging_strategy="no",
                                          use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=fb, args=args, train_dataset=dataset(),
                                   callbacks=[probe, GradualUnfreezing({1: ["block4"]})])
    trainer.train()

    for g, before in frozen.items():
        after = snapshot(bert.get_submodule(fb.freeze_group(g).modules[0]))
        assert all(torch.equal(before[k], after[k]) for k in before), g
    block4 = bert.bert.encoder.layer[3].output.dense.weight
    assert torch.equal(probe.block4_at[0], probe.block4_at[1])  # frozen through epoch 0
    assert not torch.equal(probe.block4_at[1], block4)  # unfrozen at epoch 1: it moved
    assert not all(torch.equal(head_before[k], v) for k, v in snapshot(bert.classifier).items())
    assert probe.dropout_training and not any(probe.dropout_training)  # the frozen stem's dropout stayed off
    optimizer = trainer.optimizer
    assert any(p is block4 for group in optimizer.param_groups for p in group["params"])
    scheduler = getattr(trainer.lr_scheduler, "scheduler", trainer.lr_scheduler)
    assert len(scheduler.base_lrs) == len(optimizer.param_groups)
    assert optimizer.param_groups[-1]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])  # follows the schedule

    fb.save_pretrained(tmp_path / "ckpt")
    loaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "ckpt")
    assert all(torch.equal(v, bert.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_in_place_the_trainer_saves_a_loadable_model_and_evaluates_with_labels(tmp_path):
    """In place the model stays a PreTrainedModel: save_model writes config.json, labels are found by signature."""
    bert = fz.freeze(_hf_models.bert(), trainable=["head"])
    assert isinstance(bert, transformers.BertForSequenceClassification)
    frozen = {n: p.detach().clone() for n, p in bert.named_parameters() if not p.requires_grad}
    probe = Probe(bert)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=4,
                                          learning_rate=1e-2, save_strategy="no", report_to=[], logging_strategy="no",
                                          use_cpu=True, disable_tqdm=True)  # no label_names
    trainer = transformers.Trainer(model=bert, args=args, train_dataset=dataset(), eval_dataset=dataset(8),
                                   callbacks=[probe, GradualUnfreezing({1: ["block4"]})])
    trainer.train()
    assert "eval_loss" in trainer.evaluate()  # the labels reached the model: it returned a loss
    block4 = dict(bert.named_parameters())["bert.encoder.layer.3.output.dense.weight"]
    assert torch.equal(probe.block4_at[0], probe.block4_at[1]) and not torch.equal(probe.block4_at[1], block4)
    still = {n: p for n, p in bert.named_parameters() if n in frozen and not n.startswith("bert.encoder.layer.3.")}
    assert len(still) > 30 and all(torch.equal(p, frozen[n]) for n, p in still.items())
    assert probe.dropout_training and not any(probe.dropout_training)

    trainer.save_model(str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "config.json").exists()
    loaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is transformers.BertForSequenceClassification
    assert loaded.state_dict().keys() == bert.state_dict().keys()
    assert all(torch.equal(v, bert.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_a_milestone_naming_no_group_fails_before_training():
    fb = fz.FrozenBackbone(_hf_models.bert(), trainable=["head"])
    before = fb.freeze_state()
    with pytest.raises(UnknownGroupError, match="'blok4'"):
        GradualUnfreezing({1: ["blok4"]}, model=fb)
    callback = GradualUnfreezing({1: ["blok4"]})
    with pytest.raises(UnknownGroupError, match="'blok4'.*did you mean 'block4'"):
        callback.on_train_begin(None, None, None, model=fb)
    assert fb.freeze_state() == before
