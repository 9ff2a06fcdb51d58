"""A tiny byte-level GPT trained on Python's own standard library: a bsadvisor model file.

Model: a nanoGPT-style decoder-only transformer over raw bytes (vocabulary 256): pre-LayerNorm
blocks, causal self-attention via F.scaled_dot_product_attention, learned positional embedding,
output head tied to the token embedding.

Data: text that ships with every Python, the .py files of the standard library
(sysconfig.get_paths()["stdlib"], without site-packages and the generated codec tables in
encodings/), read in sorted path order until about 4 MB: no download, and the same bytes on every
machine with the same Python install. The first 90% trains, the last 10% is held out.

bsadvisor reads model, batch, loss, optimizer and BASE_BATCH_SIZE; validation_batch is an extra
for benchmarks. Needs torch only. `python3 gpt_stdlib.py` trains 50 steps as a demo.
"""
import math
import os
import sysconfig
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB_SIZE = 256  # bytes
BLOCK_SIZE = 64
N_LAYER, N_HEAD, N_EMBD = 2, 4, 64
MAX_BYTES = 4_000_000
BASE_BATCH_SIZE = 32  # the batch size the optimizer's lr below was chosen for


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(N_EMBD, 3 * N_EMBD)
        self.proj = nn.Linear(N_EMBD, N_EMBD)

    def forward(self, x):
        B, T, C = x.shape
        # (B, T, 3C) -> three (B, n_head, T, head_size) tensors
        q, k, v = self.qkv(x).view(B, T, 3, N_HEAD, C // N_HEAD).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(N_EMBD), CausalSelfAttention()
        self.ln2, self.mlp = nn.LayerNorm(N_EMBD), nn.Sequential(
            nn.Linear(N_EMBD, 4 * N_EMBD), nn.GELU(), nn.Linear(4 * N_EMBD, N_EMBD))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))  # pre-LN: the residual stream itself is never normalised
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(VOCAB_SIZE, N_EMBD)
        self.pos_emb = nn.Embedding(BLOCK_SIZE, N_EMBD)
        self.blocks = nn.Sequential(*[Block() for _ in range(N_LAYER)])
        self.ln_f = nn.LayerNorm(N_EMBD)
        self.head = nn.Linear(N_EMBD, VOCAB_SIZE, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying, as in GPT-2
        for name, p in self.named_parameters():  # GPT-2 init
            if p.dim() == 2:  # Linear and Embedding weights
                # projections that write into the residual stream start smaller, so its
                # variance does not grow with depth
                resid = name.endswith(("proj.weight", "mlp.2.weight"))
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * N_LAYER) if resid else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        T = idx.shape[1]
        assert T <= BLOCK_SIZE, f"sequence length {T} > block_size {BLOCK_SIZE}"
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))
        return self.head(self.ln_f(self.blocks(x)))  # (B, T, 256) logits


_DATA = None  # (train bytes, validation bytes) as uint8 tensors, loaded on first use


def _data():
    global _DATA
    if _DATA is None:
        root = sysconfig.get_paths()["stdlib"]
        paths = []
        for d, dirs, files in os.walk(root):
            # encodings/ is mostly generated codec tables, not Python as people write it
            dirs[:] = [x for x in dirs if x not in ("site-packages", "__pycache__", "encodings")]
            paths += [os.path.join(d, f) for f in files if f.endswith(".py")]
        chunks, n = [], 0
        for p in sorted(paths):  # sorted: the same bytes in the same order on every run
            try:
                with open(p, "rb") as f:
                    chunks.append(f.read())
            except OSError:
                continue
            n += len(chunks[-1])
            if n >= MAX_BYTES:
                break
        data = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
        split = int(0.9 * len(data))
        _DATA = (data[:split], data[split:])
    return _DATA


def _sample(data, size):
    # random windows of BLOCK_SIZE + 1 bytes; y is x shifted by one (next-byte prediction)
    ix = torch.randint(len(data) - BLOCK_SIZE, (size, 1))
    w = data[ix + torch.arange(BLOCK_SIZE + 1)].long()
    return w[:, :-1], w[:, 1:]


def model():
    return GPT()


def batch(size):
    return _sample(_data()[0], size)


def validation_batch(size):
    return _sample(_data()[1], size)


def loss(model, batch):
    x, y = batch
    logits = model(x)
    # mean over every token; every example has BLOCK_SIZE tokens, so this is also the mean
    # over examples of their per-example loss, which the noise estimator needs
    return F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1))


def optimizer(params):
    return torch.optim.AdamW(params, lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))


if __name__ == "__main__":
    torch.manual_seed(0)
    t0 = time.perf_counter()
    train, val = _data()
    dt = time.perf_counter() - t0
    print(f"data: {len(train):,} train / {len(val):,} validation bytes, loaded in {dt:.2f}s")
    m = model()
    print(f"model: {sum(p.numel() for p in m.parameters()):,} parameters")
    opt = optimizer(m.parameters())
    t0 = time.perf_counter()
    for step in range(1, 51):
        opt.zero_grad(set_to_none=True)
        l = loss(m, batch(BASE_BATCH_SIZE))
        l.backward()
        opt.step()
        if step == 1 or step % 10 == 0:
            print(f"step {step:3d}  train loss {l.item():.3f}")
    print(f"50 steps in {time.perf_counter() - t0:.2f}s")
    with torch.no_grad():
        vl = loss(m, validation_batch(512)).item()
    print(f"validation loss {vl:.3f} (uniform guess: {math.log(VOCAB_SIZE):.3f})")
