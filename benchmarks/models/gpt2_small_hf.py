"""GPT-2 small (124M) as transformers builds it from GPT2Config()'s defaults (12 layers, 12 heads, 768 wide,
1024 positions, dropout 0.1; no download), float32, AdamW, 1024 tokens an example, the loss transformers
computes from `labels`. The model the issue's GPT-2 small check (8.1 GB of RSS, 33 s) was run on. Needs
`transformers` (optional: benchmarks/llm_check.py skips this file without it)."""
import torch
from transformers import GPT2Config, GPT2LMHeadModel

CONFIG = GPT2Config(attn_implementation="sdpa")


def model():
    return GPT2LMHeadModel(CONFIG)


def batch(size):
    ids = torch.randint(0, CONFIG.vocab_size, (size, CONFIG.n_positions))
    return {"input_ids": ids, "labels": ids}


def optimizer(params):
    return torch.optim.AdamW(params, lr=6e-4)
