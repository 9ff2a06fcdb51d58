"""A small 1-D CNN that predicts the next byte of Python source: a bsadvisor model file for the benchmarks.

Data: the same bytes as examples/gpt_stdlib.py (the standard library's .py files, 90/10 split), read
through that file. Input: the previous 32 bytes one-hot (256 channels x 32 positions, float32);
target: the next byte. Model: Conv1d -> ReLU -> Conv1d (stride 2) -> ReLU -> Flatten -> Linear, only
layers BackPACK supports, so the noise benchmark can compare with it. SGD with momentum.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from stdlib_bytes import windows

CONTEXT = 32
CHANNELS = 64
BASE_BATCH_SIZE = 64

def _sample(split, size):
    w = windows(split, size, CONTEXT)
    x = F.one_hot(w[:, :-1], 256).transpose(1, 2).float()  # (size, 256, CONTEXT)
    return x, w[:, -1]


def model():
    return nn.Sequential(
        nn.Conv1d(256, CHANNELS, 5), nn.ReLU(),                 # 32 -> 28
        nn.Conv1d(CHANNELS, CHANNELS, 5, stride=2), nn.ReLU(),  # 28 -> 12
        nn.Flatten(),
        nn.Linear(CHANNELS * 12, 256),
    )


def batch(size):
    return _sample(0, size)


def validation_batch(size):
    return _sample(1, size)


def optimizer(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)
