"""Llama-3-8B's shape with LoRA adapters (rank 16, alpha 32) on q, k, v and o, every base weight frozen,
bf16, AdamW over the adapters, 2048 tokens an example. A bsadvisor model file for capacity checks."""
import dataclasses

import torch
from llama import LLAMA3_8B, LlamaForCausalLM, lm_loss, token_batch

TOKENS = 2048
CONFIG = dataclasses.replace(LLAMA3_8B, lora_rank=16)


def model():
    return LlamaForCausalLM(CONFIG)


def batch(size):
    return token_batch(CONFIG, size, TOKENS)


loss = lm_loss


def optimizer(params):
    return torch.optim.AdamW(params, lr=2e-4)
