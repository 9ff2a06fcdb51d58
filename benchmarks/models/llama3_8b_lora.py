"""Llama-3-8B's shape with LoRA adapters (rank 16, alpha 32) on q, k, v and o, every base weight frozen,
bf16, AdamW over the adapters, 2048 tokens an example. A bsadvisor model file for capacity checks."""
import dataclasses

import torch
from llama import LLAMA3_8B, contract

model, batch, loss, optimizer = contract(dataclasses.replace(LLAMA3_8B, lora_rank=16), 2048,
                                         lambda params: torch.optim.AdamW(params, lr=2e-4))
