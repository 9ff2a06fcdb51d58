"""TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads, 4 KV heads, intermediate 5632, vocab 32000),
bf16 weights, AdamW, 2048 tokens an example: a full fine-tune. A bsadvisor model file for capacity checks."""
import torch
from llama import TINYLLAMA_1B, contract

model, batch, loss, optimizer = contract(TINYLLAMA_1B, 2048, lambda params: torch.optim.AdamW(params, lr=1e-5))
