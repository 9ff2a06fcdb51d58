"""Attention as the target GPU runs it, in a trace that runs on the CPU.

`F.scaled_dot_product_attention` picks a kernel by device, dtype and shape. On the CPU it takes the math
path (or the CPU flash kernel), and the math path keeps the B·H·L² attention weights (and, with dropout,
their mask) for the backward pass: GPT-2 small with dropout holds twelve 1x12x1024x1024 float32 tensors
a layer. A GPU's flash and memory-efficient kernels keep the output and a B·H·L log-sum-exp. And under
FakeTensorMode the choice is not even the one the real inputs would get (pytorch#115362). So for a CUDA
profile the trace calls the kernel that GPU would pick, through its own meta (fake) implementation:

- flash (`_scaled_dot_product_flash_attention`): compute capability 8.0 or more, float16/bfloat16, head
  dimension a multiple of 8 up to 256, no attention mask;
- memory-efficient (`_scaled_dot_product_efficient_attention`): compute capability 5.0 or more (8.0 for
  bfloat16), float32/float16/bfloat16, head dimension a multiple of 8 (4 in float32); takes a mask;
- math (`_scaled_dot_product_attention_math`): anything else.

These are the first checks of torch's sdp_utils (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp),
not all of them; the profile's `attention_backend` or `--attention` names one outright. What the kernels
allocate inside (flash's backward accumulators) goes through no operator output and is not traced.
"""

from collections import Counter

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "flash", "efficient", "math")
HALF = (torch.float16, torch.bfloat16)


def gpu_backend(capability: tuple[int, int] | None, dtype: torch.dtype, head_dim: int, masked: bool) -> str:
    """The kernel a CUDA device of `capability` picks for SDPA on these inputs (see the module's list)."""
    if capability is None:
        return "math"
    if capability >= (8, 0) and dtype in HALF and head_dim % 8 == 0 and head_dim <= 256 and not masked:
        return "flash"
    efficient_dtypes = (torch.float32, torch.float16) + ((torch.bfloat16,) if capability >= (8, 0) else ())
    if capability >= (5, 0) and dtype in efficient_dtypes and head_dim % (8 if dtype in HALF else 4) == 0:
        return "efficient"
    return "math"


class GpuAttention:
    """While entered, every `torch.nn.functional.scaled_dot_product_attention` call runs the kernel a GPU would
    (`backend`, or chosen per call from `capability` when it is "auto"); `used` counts the kernels that ran.

    The function is swapped in torch.nn.functional for the step (transformers, nn.MultiheadAttention and model
    code call it from there), not intercepted by a TorchFunctionMode: a mode is off while its own handler
    runs, and `loss.backward()` passes through that handler, so activation checkpointing would recompute
    the attention with the CPU's kernel and find other tensors saved. A file that bound the function to a
    name of its own at import keeps the CPU's."""

    def __init__(self, backend: str, capability: tuple[int, int] | None):
        self.backend, self.capability = backend, capability
        self.used: Counter = Counter()
        self._saved = None

    def __enter__(self):
        self._saved = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = self._attention
        return self

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self._saved
        return False

    def _attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
        backend = self.backend
        if backend == "auto":
            backend = gpu_backend(self.capability, query.dtype, query.shape[-1], attn_mask is not None)
        self.used[backend] += 1
        if backend == "flash" and attn_mask is None:
            if not enable_gqa:
                key, value = _repeated(query, key), _repeated(query, value)
            return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                      False, scale=scale)[0]
        key, value = _repeated(query, key), _repeated(query, value)  # GQA: key/value heads shared out
        if backend in ("efficient", "flash"):
            bias = _as_bias(attn_mask, query.dtype)
            return torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, bias, query.requires_grad or key.requires_grad or value.requires_grad,
                dropout_p, is_causal, scale=scale)[0]
        return torch.ops.aten._scaled_dot_product_attention_math(query, key, value, attn_mask, dropout_p, is_causal,
                                                                 scale=scale)[0]

    def describe(self) -> str:
        return ", ".join(f"{name} ({count} call{'s' if count != 1 else ''} a step)" for name, count in self.used.items())


def _repeated(query: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Key/value heads repeated to the query's (grouped-query attention), as the kernels without GQA need."""
    if kv.dim() < 3 or kv.shape[-3] == query.shape[-3]:
        return kv
    return kv.repeat_interleave(query.shape[-3] // kv.shape[-3], dim=-3)


def _as_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask as the additive bias the memory-efficient kernel takes (torch converts it the same way)."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, float("-inf"))
