"""Llama-3-8B's shape, full fine-tune as llama3_8b.py, with gradient checkpointing: each decoder layer
recomputed in the backward pass (torch.utils.checkpoint, non-reentrant, as gradient_checkpointing_enable()
does), so that only each layer's input is kept from the forward pass."""
import dataclasses

import torch
from llama import LLAMA3_8B, contract

model, batch, loss, optimizer = contract(dataclasses.replace(LLAMA3_8B, gradient_checkpointing=True), 2048,
                                         lambda params: torch.optim.AdamW(params, lr=1e-5))
