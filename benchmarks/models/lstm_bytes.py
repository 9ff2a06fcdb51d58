"""A byte-level LSTM language model on Python source: a bsadvisor model file for the benchmarks.

Data: the same bytes as examples/gpt_stdlib.py (the standard library's .py files, 90/10 split), read
through that file. Windows of 32 bytes; the model predicts each next byte. Model: an embedding, one
LSTM layer and a linear head. Adam, as recurrent language models are usually trained: a recurrent
kind beside the transformer, the MLP and the CNN, and an adaptive optimizer whose noise scale is taken
in Adam's own geometry.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from stdlib_bytes import windows

CONTEXT = 32
BASE_BATCH_SIZE = 32


class LSTMLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(256, 32)
        self.lstm = nn.LSTM(32, 128, batch_first=True)
        self.head = nn.Linear(128, 256)

    def forward(self, x):
        out, _ = self.lstm(self.emb(x))
        return self.head(out)


def _sample(split, size):
    w = windows(split, size, CONTEXT)
    return w[:, :-1], w[:, 1:]


def model():
    return LSTMLM()


def batch(size):
    return _sample(0, size)


def validation_batch(size):
    return _sample(1, size)


def loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))


def optimizer(params):
    return torch.optim.Adam(params, lr=2e-3)
