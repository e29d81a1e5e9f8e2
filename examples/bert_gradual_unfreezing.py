"""A BERT fine-tuned in the Hugging Face Trainer with gradual unfreezing, on the CPU in seconds.

A tiny ``BertForSequenceClassification`` (random weights, 4 layers) learns a synthetic task: is the first
token even. ``fz.FrozenBackbone`` freezes everything but the task head (the pooler and the classifier);
``GradualUnfreezing`` unfreezes the last layer at epoch 1 and the one before it at epoch 2, adding them to
the Trainer's optimizer and LR schedule. The embeddings and the first two layers stay bit-identical, their
dropout off. The result is saved with ``save_pretrained`` and reloaded by the plain class.

    python examples/bert_gradual_unfreezing.py
"""

from __future__ import annotations

import tempfile

import torch
import transformers

import freezable as fz
from freezable.integrations.transformers import GradualUnfreezing

MILESTONES = {1: ["block4"], 2: ["block3"]}  # epoch -> groups unfrozen when it starts


def tiny_bert() -> transformers.BertForSequenceClassification:
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100, max_position_embeddings=32)
    return transformers.BertForSequenceClassification(config)


def dataset(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (n, 8), generator=g)
    return [{"input_ids": ids[i], "labels": int(ids[i, 0] % 2), "id": i} for i in range(n)]  # "id": unused column


def main(epochs: int = 3, samples: int = 32) -> dict[str, bool]:
    bert = tiny_bert()
    fb = fz.FrozenBackbone(bert, trainable=["head"])  # embeddings and every layer frozen
    stem_before = {k: v.clone() for k, v in bert.bert.embeddings.state_dict().items()}
    layer4_before = bert.bert.encoder.layer[3].state_dict()["output.dense.weight"].clone()
    print(fb)
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=8,
                                              learning_rate=5e-3, save_strategy="no", report_to=[],
                                              logging_strategy="no", use_cpu=True, disable_tqdm=True)
        trainer = transformers.Trainer(model=fb, args=args, train_dataset=dataset(samples),
                                       callbacks=[GradualUnfreezing(MILESTONES)])
        trainer.train()
        print(fb.freeze_summary())
        fb.save_pretrained(out)
        reloaded = transformers.BertForSequenceClassification.from_pretrained(out)
    result = {
        "stem_unchanged": all(torch.equal(v, bert.bert.embeddings.state_dict()[k]) for k, v in stem_before.items()),
        "layer4_moved": not torch.equal(layer4_before, bert.bert.encoder.layer[3].output.dense.weight),
        "reloaded_equal": all(torch.equal(v, bert.state_dict()[k]) for k, v in reloaded.state_dict().items()),
    }
    print(f"embeddings bit-identical after training: {result['stem_unchanged']}")
    print(f"layer 4 (unfrozen at epoch 1) moved: {result['layer4_moved']}")
    print(f"save_pretrained checkpoint reloads equal: {result['reloaded_equal']}")
    return result


if __name__ == "__main__":
    main()
