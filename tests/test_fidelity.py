"""Fake == real, operator family by operator family: the fake-mode trace of a step (model built for real
then made fake, and model built under FakeTensorMode) against real CPU steps' tracked peak, to the byte,
at two batch sizes. A family whose fake kernel holds less than its real kernel (the CPU LSTM's workspace)
would make the largest batch too large; advisor/memory/fake_kernels.py mends the ones found here."""

import pytest

from advisor.memory.trace import StepTracer
from advisor.spec import check_contract, load_spec

HEAD = """
import torch
import torch.nn as nn
import torch.nn.functional as F
"""

# name -> (model class body returning a scalar-able output, batch(n) body, optimizer or None)
FAMILIES = {
    "lstm-2-layers-bidirectional": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.e = nn.Embedding(40, 12); s.r = nn.LSTM(12, 24, num_layers=2, bidirectional=True, batch_first=True); s.o = nn.Linear(48, 40)
    def forward(s, x): return s.o(s.r(s.e(x))[0])
""", "r = torch.randint(0, 40, (n, 10)); return r[:, :-1], r[:, 1:]", None),
    "lstm-time-major-dropout": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.r = nn.LSTM(7, 33, num_layers=2, dropout=0.2); s.o = nn.Linear(33, 3)
    def forward(s, x): return s.o(s.r(x.transpose(0, 1))[0][-1])
""", "return torch.randn(n, 6, 7), torch.randint(0, 3, (n,))", None),
    "lstm-projection": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.r = nn.LSTM(8, 32, proj_size=16, batch_first=True); s.o = nn.Linear(16, 3)
    def forward(s, x): return s.o(s.r(x)[0][:, -1])
""", "return torch.randn(n, 5, 8), torch.randint(0, 3, (n,))", None),
    "lstm-bf16": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.r = nn.LSTM(8, 32, batch_first=True, dtype=torch.bfloat16); s.o = nn.Linear(32, 3, dtype=torch.bfloat16)
    def forward(s, x): return s.o(s.r(x.bfloat16())[0][:, -1]).float()
""", "return torch.randn(n, 5, 8), torch.randint(0, 3, (n,))", None),
    "gru": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.r = nn.GRU(9, 20, num_layers=2, batch_first=True, bidirectional=True); s.o = nn.Linear(40, 4)
    def forward(s, x): return s.o(s.r(x)[0][:, -1])
""", "return torch.randn(n, 7, 9), torch.randint(0, 4, (n,))", None),
    "rnn-tanh-and-cells": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.r = nn.RNN(6, 16, batch_first=True); s.c = nn.LSTMCell(16, 16); s.g = nn.GRUCell(16, 16); s.o = nn.Linear(16, 2)
    def forward(s, x):
        y = s.r(x)[0]; h = c = y.new_zeros(y.shape[0], 16); g = h
        for t in range(y.shape[1]):
            h, c = s.c(y[:, t], (h, c)); g = s.g(h, g)
        return s.o(g)
""", "return torch.randn(n, 4, 6), torch.randint(0, 2, (n,))", None),
    "sdpa-causal-dropout-mask": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.qkv = nn.Linear(16, 48); s.o = nn.Linear(16, 5)
    def forward(s, x):
        q, k, v = s.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 8).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.1)
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        b = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return s.o((a + b).transpose(1, 2).reshape(x.shape[0], x.shape[1], 16)[:, -1])
""", "return torch.randn(n, 11, 16), torch.randint(0, 5, (n,))", None),
    "multihead-attention-and-encoder-layer": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.a = nn.MultiheadAttention(16, 4, dropout=0.1, batch_first=True)
        s.l = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, norm_first=True); s.o = nn.Linear(16, 3)
    def forward(s, x):
        y, w = s.a(x, x, x, need_weights=True)
        z, _ = s.a(y, y, y, need_weights=False)
        return s.o(s.l(z)[:, 0])
""", "return torch.randn(n, 9, 16), torch.randint(0, 3, (n,))", None),
    "manual-attention-gqa": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.q = nn.Linear(16, 16); s.kv = nn.Linear(16, 8); s.o = nn.Linear(16, 3)
    def forward(s, x):
        b, t, _ = x.shape
        q = s.q(x).view(b, t, 4, 4).transpose(1, 2)
        k, v = s.kv(x).view(b, t, 2, 2, 2).permute(2, 0, 3, 1, 4)
        k, v = torch.cat([k, k], -1).repeat_interleave(2, 1), torch.cat([v, v], -1).repeat_interleave(2, 1)
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=False, scale=0.3)
        w = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        return s.o((y + w).transpose(1, 2).reshape(b, t, 16).mean(1))
""", "return torch.randn(n, 6, 16), torch.randint(0, 3, (n,))", None),
    "convolutions-and-pooling": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__()
        s.c1 = nn.Conv2d(3, 8, 3, padding=1); s.c2 = nn.Conv2d(8, 8, 3, groups=8, dilation=2, padding=2)
        s.t = nn.ConvTranspose2d(8, 4, 2, stride=2); s.c3 = nn.Conv3d(1, 2, 3, padding=1); s.c4 = nn.Conv1d(4, 4, 5, stride=2)
        s.o = nn.Linear(4 + 2 + 4, 6)
    def forward(s, x):
        y = F.max_pool2d(F.relu(s.c2(s.c1(x))), 2)
        y = F.adaptive_avg_pool2d(F.interpolate(s.t(y), scale_factor=0.5, mode="bilinear"), 1).flatten(1)
        z = s.c3(x[:, :1].unsqueeze(1)).mean((2, 3, 4))
        w = F.avg_pool1d(s.c4(x[:, :, 0, :4].repeat(1, 1, 4).reshape(x.shape[0], 4, -1)[:, :, :12]), 2).mean(-1)
        return s.o(torch.cat([y, z, w], 1))
""", "return torch.randn(n, 3, 12, 12), torch.randint(0, 6, (n,))", None),
    "embeddings": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.e = nn.Embedding(100, 12, padding_idx=0, max_norm=None); s.b = nn.EmbeddingBag(100, 12, mode="mean")
        s.o = nn.Linear(24, 100)
    def forward(s, x): return s.o(torch.cat([s.e(x).mean(1), s.b(x)], 1))
""", "r = torch.randint(0, 100, (n, 7)); return r, r[:, 0].clone()", None),
    "norms": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.c = nn.Conv2d(2, 8, 3); s.bn = nn.BatchNorm2d(8); s.gn = nn.GroupNorm(2, 8); s.inn = nn.InstanceNorm2d(8, affine=True)
        s.ln = nn.LayerNorm(8); s.rms = nn.RMSNorm(8); s.bn1 = nn.BatchNorm1d(8); s.o = nn.Linear(8, 3)
    def forward(s, x):
        y = s.inn(s.gn(s.bn(s.c(x)))).mean((2, 3))
        return s.o(s.bn1(s.rms(s.ln(y))))
""", "return torch.randn(n, 2, 7, 7), torch.randint(0, 3, (n,))", None),
    "activations-dropout-losses": ("""
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.a = nn.Linear(10, 32); s.b = nn.Linear(32, 4)
    def forward(s, x): return s.b(F.dropout(F.gelu(F.silu(s.a(x))) * torch.sigmoid(s.a(x)), 0.3) + F.softplus(s.a(x))[:, :4].mean())
""", "return torch.randn(n, 10), torch.randint(0, 4, (n,))",
        None),
}

OPTIMIZERS = {
    "adamw-fused": "torch.optim.AdamW(p, lr=1e-3, fused=True)",
    "adam-foreach-amsgrad": "torch.optim.Adam(p, lr=1e-3, foreach=True, amsgrad=True)",
    "sgd-foreach-nesterov": "torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, foreach=True)",
    "adagrad-constructor-state": "torch.optim.Adagrad(p, lr=0.1)",
    "rmsprop-centered": "torch.optim.RMSprop(p, lr=1e-3, centered=True, momentum=0.9)",
    "adamax-nadam-radam": None,  # three optimizers, one file each: below
    "adadelta": "torch.optim.Adadelta(p)",
    "asgd": "torch.optim.ASGD(p, lr=0.01)",
    "rprop": "torch.optim.Rprop(p)",
    "nadam": "torch.optim.NAdam(p, lr=1e-3, decoupled_weight_decay=True)",
    "radam": "torch.optim.RAdam(p, lr=1e-3)",
    "adamax": "torch.optim.Adamax(p, lr=1e-3, foreach=True)",
    "adafactor": "torch.optim.Adafactor(p, lr=1e-2)",
}
OPTIMIZERS = {k: v for k, v in OPTIMIZERS.items() if v}


def model_file(body: str, batch_body: str, optimizer: str | None) -> str:
    opt = f"\ndef optimizer(p):\n    return {optimizer}\n" if optimizer else ""
    return (f"{HEAD}{body}\ndef model():\n    return M()\n\ndef batch(n):\n    {batch_body}\n{opt}")


def assert_fake_equals_real(path, sizes=(3, 7), built_for_real_too=True):
    """The fake-built trace (a profiled device's) against real steps; with `built_for_real_too`, the trace of
    the model built for real and made fake (the CPU device's) as well."""
    spec = load_spec(path)
    smallest = check_contract(spec)  # 2 with BatchNorm1d
    real = StepTracer(spec, fake=False, smallest=smallest)
    traces = {"fake-built": StepTracer(spec, fake=True, build_fake=True, smallest=smallest)}
    if built_for_real_too:
        traces["real-built, made fake"] = StepTracer(spec, fake=True, smallest=smallest)
    for size in sizes:
        truth = real.peak(size)
        for how, tracer in traces.items():
            assert tracer.peak(size) == truth, f"batch {size}: {how} trace"


# The two ways of building differ in construction only; families whose kernels are mended or whose modules
# make tensors in their constructors are held to real steps both ways.
BOTH_BUILDS = {"lstm-2-layers-bidirectional", "gru", "multihead-attention-and-encoder-layer", "norms", "embeddings"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_operator_family_fake_equals_real(write_model, family):
    body, batch_body, optimizer = FAMILIES[family]
    assert_fake_equals_real(write_model(model_file(body, batch_body, optimizer)),
                            built_for_real_too=family in BOTH_BUILDS)


MLP_BODY = """
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.a = nn.Linear(12, 40); s.n = nn.LayerNorm(40); s.b = nn.Linear(40, 3)
    def forward(s, x): return s.b(s.n(F.relu(s.a(x))))
"""


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_family_fake_equals_real(write_model, name):
    source = model_file(MLP_BODY, "return torch.randn(n, 12), torch.randint(0, 3, (n,))", OPTIMIZERS[name])
    assert_fake_equals_real(write_model(source), built_for_real_too=name == "adagrad-constructor-state")
