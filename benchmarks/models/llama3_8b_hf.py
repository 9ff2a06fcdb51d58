"""Llama-3-8B as transformers builds it: LlamaForCausalLM from a LlamaConfig with Llama-3-8B's dimensions
(no download), bf16 weights, SDPA attention, AdamW, 2048 tokens an example, the loss transformers computes
from `labels`. Needs `transformers` (optional: benchmarks/llm_check.py skips this file without it)."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

TOKENS = 2048
CONFIG = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                     rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                     attn_implementation="sdpa")


def model():
    return LlamaForCausalLM._from_config(CONFIG, dtype=torch.bfloat16)


def batch(size):
    ids = torch.randint(0, CONFIG.vocab_size, (size, TOKENS))
    return {"input_ids": ids, "labels": ids}


def optimizer(params):
    return torch.optim.AdamW(params, lr=1e-5)
