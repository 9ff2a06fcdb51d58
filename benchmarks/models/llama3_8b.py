"""Llama-3-8B's shape (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256),
bf16 weights, AdamW, 2048 tokens an example: a full fine-tune. A bsadvisor model file for capacity
checks (`bsadvisor check benchmarks/models/llama3_8b.py --profile h100-sxm-80gb --batch-size 1`)."""
import torch
from llama import LLAMA3_8B, contract

model, batch, loss, optimizer = contract(LLAMA3_8B, 2048, lambda params: torch.optim.AdamW(params, lr=1e-5))
