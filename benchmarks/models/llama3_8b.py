"""Llama-3-8B's shape (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256),
bf16 weights, AdamW, 2048 tokens an example: a full fine-tune. A bsadvisor model file for capacity
checks (`bsadvisor check benchmarks/models/llama3_8b.py --profile h100-sxm-80gb --batch-size 1`).
Random token ids stand in for data: memory depends on the shapes, not the values."""
import torch
from llama import LLAMA3_8B, LlamaForCausalLM, lm_loss, token_batch

TOKENS = 2048
CONFIG = LLAMA3_8B


def model():
    return LlamaForCausalLM(CONFIG)


def batch(size):
    return token_batch(CONFIG, size, TOKENS)


loss = lm_loss


def optimizer(params):
    return torch.optim.AdamW(params, lr=1e-5)
