"""Tiny Hugging Face models for the tests (random weights, a few thousand parameters, CPU)."""

from __future__ import annotations

import torch

SIZES = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=100)


def bert(num_labels: int = 2, layers: int = 4):
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=layers, max_position_embeddings=64, num_labels=num_labels,
                                     **SIZES)
    return transformers.BertForSequenceClassification(config)


def gpt2(layers: int = 2):
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=layers, n_embd=32, n_head=2, n_positions=64, vocab_size=100)
    return transformers.GPT2LMHeadModel(config)


def t5(layers: int = 2):
    import transformers

    torch.manual_seed(0)
    config = transformers.T5Config(num_layers=layers, d_model=32, d_ff=64, d_kv=16, num_heads=2, vocab_size=100,
                                   decoder_start_token_id=0, pad_token_id=0)
    return transformers.T5ForSequenceClassification(config)
