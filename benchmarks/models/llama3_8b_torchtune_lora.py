"""Llama-3.1-8B's shape fine-tuned with LoRA as torchtune's recipes/configs/llama3_1/8B_lora_single_device.yaml
sets it (at commit 30b8519e8, whose README publishes peak memory for it): rank 8, alpha 16 on q_proj and
v_proj, the base frozen, bf16, activation checkpointing, fused AdamW; 2048 tokens an example, checked at
batch 2 as the README's figures are. Not reproduced: its chunked cross-entropy loss and torch.compile (the
README's figures have compile on), which both lower the peak."""
import dataclasses

import torch
from llama import LLAMA3_8B, contract

CONFIG = dataclasses.replace(LLAMA3_8B, lora_rank=8, lora_alpha=16.0, lora_targets=("q_proj", "v_proj"),
                             gradient_checkpointing=True)
model, batch, loss, optimizer = contract(CONFIG, 2048,
                                         lambda params: torch.optim.AdamW(params, lr=3e-4, weight_decay=0.01, fused=True))
