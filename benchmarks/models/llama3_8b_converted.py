"""Llama-3-8B's shape built in float32 and converted in model() (`.to(torch.bfloat16)`), as many training
scripts do; otherwise llama3_8b.py (AdamW, 2048 tokens an example). A bsadvisor model file for capacity
checks: built under FakeTensorMode, the conversion swaps every fake parameter for a bf16 one."""
import dataclasses

import torch
from llama import LLAMA3_8B, LlamaForCausalLM, contract

_, batch, loss, optimizer = contract(LLAMA3_8B, 2048, lambda params: torch.optim.AdamW(params, lr=1e-5))


def model():
    return LlamaForCausalLM(dataclasses.replace(LLAMA3_8B, dtype=torch.float32)).to(torch.bfloat16)
