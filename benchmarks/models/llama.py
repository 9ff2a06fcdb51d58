"""A Llama-shaped decoder in plain torch, for capacity checks at LLM scale (no hub download, no transformers).

The architecture of Llama 3 as Hugging Face's `LlamaForCausalLM` computes it (modeling_llama.py): token
embedding; per layer RMSNorm -> grouped-query attention with rotary embeddings (SDPA, causal) -> residual,
RMSNorm -> SwiGLU MLP -> residual; final RMSNorm; an untied LM head; the loss is cross-entropy on logits
upcast to float32, as its `ForCausalLMLoss` does. `lora_rank` adds LoRA adapters (A: r x in, B: out x r,
as PEFT's `lora.Linear`) to the attention projections named in `lora_targets` and freezes every base weight;
`gradient_checkpointing` recomputes each layer in the backward pass (`torch.utils.checkpoint`,
non-reentrant, as `gradient_checkpointing_enable()` does in recent transformers).

Model files (llama3_8b.py, tinyllama.py, ...) pick the dimensions. Everything is built with
`dtype` from the start (not built in float32 and cast), as `from_pretrained(torch_dtype=...)` does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    dtype: torch.dtype = torch.bfloat16
    lora_rank: int = 0            # 0: full fine-tune; r > 0: LoRA adapters on lora_targets, base frozen
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    gradient_checkpointing: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


LLAMA3_8B = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8)
# TinyLlama-1.1B (TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T config.json).
TINYLLAMA_1B = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, rope_theta=10000.0)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype  # computed in float32, as LlamaRMSNorm does
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class LoRALinear(nn.Module):
    """A frozen base Linear plus a trainable low-rank update B·A, scaled by alpha / r (PEFT's lora.Linear)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, dtype=base.weight.dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, dtype=base.weight.dtype)
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim

        def linear(name, inputs, out):
            layer = nn.Linear(inputs, out, bias=False, dtype=c.dtype)
            return LoRALinear(layer, c.lora_rank, c.lora_alpha) if c.lora_rank and name in c.lora_targets else layer
        h, q, kv = c.hidden_size, self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.q_proj, self.k_proj = linear("q_proj", h, q), linear("k_proj", h, kv)
        self.v_proj, self.o_proj = linear("v_proj", h, kv), linear("o_proj", q, h)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        # grouped-query attention: each key/value head serves heads // kv_heads query heads (repeat_kv)
        repeat = self.heads // self.kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False, dtype=c.dtype)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False, dtype=c.dtype)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False, dtype=c.dtype)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.dtype)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.dtype)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, dtype=c.dtype)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.dtype)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False, dtype=c.dtype)
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        if c.lora_rank:
            for name, p in self.named_parameters():  # only the adapters train
                p.requires_grad_(".lora_" in name)

    def rotary(self, t: int, dtype: torch.dtype):
        freqs = torch.outer(torch.arange(t, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, input_ids, labels=None):
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(input_ids.shape[1], x.dtype)
        for layer in self.layers:
            if self.config.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        if labels is None:
            return logits
        # ForCausalLMLoss: shift, upcast the logits to float32, mean cross-entropy over the tokens
        logits = logits[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))


def parameter_count(c: LlamaConfig) -> int:
    """Parameters of the base model, from the dimensions (the LoRA adapters apart)."""
    h, kv = c.hidden_size, c.num_key_value_heads * c.head_dim
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * c.intermediate_size + 2 * h
    return c.vocab_size * h * 2 + c.num_hidden_layers * per_layer + h


def token_batch(c: LlamaConfig, size: int, tokens: int):
    ids = torch.randint(0, c.vocab_size, (size, tokens))
    return {"input_ids": ids, "labels": ids}


def lm_loss(model, batch):
    return model(**batch)


def contract(config: LlamaConfig, tokens: int, optimizer):
    """A model file's model, batch, loss and optimizer for `config` at `tokens` tokens an example (random ids
    stand in for data: memory depends on the shapes, not the values)."""
    return (lambda: LlamaForCausalLM(config), lambda size: token_batch(config, size, tokens), lm_loss, optimizer)


assert math.isclose(parameter_count(LLAMA3_8B) / 1e9, 8.03, abs_tol=0.01)
