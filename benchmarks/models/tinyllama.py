"""TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads, 4 KV heads, intermediate 5632, vocab 32000),
bf16 weights, AdamW, 2048 tokens an example: a full fine-tune. A bsadvisor model file for capacity checks."""
import torch
from llama import TINYLLAMA_1B, LlamaForCausalLM, lm_loss, token_batch

TOKENS = 2048
CONFIG = TINYLLAMA_1B


def model():
    return LlamaForCausalLM(CONFIG)


def batch(size):
    return token_batch(CONFIG, size, TOKENS)


loss = lm_loss


def optimizer(params):
    return torch.optim.AdamW(params, lr=1e-5)
