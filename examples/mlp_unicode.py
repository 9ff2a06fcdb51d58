"""An MLP that learns Unicode's general categories from code points: a bsadvisor model file.

Task: given a code point, predict its general category (unicodedata.category: 'Lu' upper-case
letter, 'Nd' decimal digit, 'Po' punctuation, 'Lo' other letter, 'Co' private use, ...). The data
is the Unicode database that ships with Python: every code point 0..0x10FFFF except the
unassigned ('Cn'), private-use ('Co') and surrogate ('Cs') ones, which carry no information, so it
needs no download; its size depends on the Python version's Unicode version. Every 10th of them, in code-point
order, is held out for validation; classes are the categories present, sorted by name.

Features: the code point's 21 bits as 0.0/1.0, nothing else. Neighbouring code points mostly
share a category (Unicode assigns in blocks), so the high bits find the block and the low bits
the exceptions inside it. Features are computed per batch, so only the code points are kept.

The classes are unbalanced: other letters ('Lo', mostly CJK and Hangul) are most of the data,
so accuracy beyond that share is what shows real learning (the demo prints it).

bsadvisor reads model, batch, optimizer and BASE_BATCH_SIZE (no loss: y is an integer class,
so its default cross-entropy applies); validation_batch is an extra for benchmarks.
Needs torch only. `python3 mlp_unicode.py` trains 200 steps as a demo.
"""
import time
import unicodedata

import torch
import torch.nn as nn
import torch.nn.functional as F

N_BITS = 21  # 0x10FFFF < 2**21
HIDDEN = 256
BASE_BATCH_SIZE = 128  # the batch size the optimizer's lr below was chosen for
_BITS = 2 ** torch.arange(N_BITS)

_DATA = None  # dict of code points / labels per split, and the class names; built on first use


def _data():
    global _DATA
    if _DATA is None:
        cats = [unicodedata.category(chr(c)) for c in range(0x110000)]
        points = [c for c, cat in enumerate(cats) if cat not in ("Cn", "Co", "Cs")]
        classes = sorted({cats[c] for c in points})
        index = {cat: i for i, cat in enumerate(classes)}
        points = torch.tensor(points)
        labels = torch.tensor([index[cats[c]] for c in points.tolist()])
        val = torch.arange(len(points)) % 10 == 9  # every 10th: spread evenly over all blocks
        _DATA = {"train": (points[~val], labels[~val]), "val": (points[val], labels[val]),
                 "classes": classes}
    return _DATA


def features(points):
    """(N,) int64 code points -> (N, 21) float32 bits, least significant first."""
    return (points.unsqueeze(1) & _BITS).ne(0).float()


def _sample(split, size):
    points, labels = _data()[split]
    i = torch.randint(len(points), (size,))  # with replacement, from torch's global RNG
    return features(points[i]), labels[i]


def model():
    n_classes = len(_data()["classes"])  # depends on the Unicode version; cheap after the first call
    return nn.Sequential(
        nn.Linear(N_BITS, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, n_classes),
    )


def batch(size):
    return _sample("train", size)


def validation_batch(size):
    return _sample("val", size)


def optimizer(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


if __name__ == "__main__":
    torch.manual_seed(0)
    t0 = time.perf_counter()
    d = _data()
    dt = time.perf_counter() - t0
    print(f"data: {len(d['train'][0]):,} train / {len(d['val'][0]):,} validation code points, "
          f"{len(d['classes'])} classes, built in {dt:.2f}s")
    m = model()
    opt = optimizer(m.parameters())
    t0 = time.perf_counter()
    for step in range(1, 201):
        x, y = batch(BASE_BATCH_SIZE)
        opt.zero_grad(set_to_none=True)
        l = F.cross_entropy(m(x), y)  # what bsadvisor's default loss does for an integer y
        l.backward()
        opt.step()
        if step == 1 or step % 20 == 0:
            print(f"step {step:3d}  train loss {l.item():.3f}")
    print(f"200 steps in {time.perf_counter() - t0:.2f}s")
    points, labels = d["val"]  # the whole validation split: small enough for one forward pass
    with torch.no_grad():
        acc = (m(features(points)).argmax(1) == labels).float().mean().item()
    majority = labels.bincount().max().item() / len(labels)
    print(f"validation accuracy {acc:.3f} (always guessing the commonest class: {majority:.3f})")
