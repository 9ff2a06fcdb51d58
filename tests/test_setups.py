"""Training set-ups traced as they run, each held to real CPU steps at a small size: bf16 weights, autocast,
activation checkpointing, a frozen base with LoRA adapters, gradient accumulation, training mode, batches
whose shapes vary. The truth is real steps' tracked peak (LiveStorageTracker on real tensors), taken by a
loop written here, independent of the tracer where the tracer's own step is what is under test."""

import json

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from typer.testing import CliRunner

from advisor.cli import app
from advisor.memory.trace import StepTracer, optimizer_state
from advisor.memory.tracker import LiveStorageTracker
from advisor.spec import load_spec

BLOCK = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DTYPE = torch.float32
CHECKPOINT = None   # None, "reentrant", "non-reentrant"
CONVERT = None      # what model() does to the model it built (m.to(dtype), m.half(), ...)
LORA = False
BLOCKS = 1

class LoRA(nn.Module):
    def __init__(s, base, r=4):
        super().__init__(); s.base = base.requires_grad_(False)
        s.a = nn.Linear(base.in_features, r, bias=False, dtype=base.weight.dtype)
        s.b = nn.Linear(r, base.out_features, bias=False, dtype=base.weight.dtype)
    def forward(s, x): return s.base(x) + s.b(s.a(x))

class Block(nn.Module):
    def __init__(s):
        super().__init__(); s.n = nn.LayerNorm(32, dtype=DTYPE); s.qkv = nn.Linear(32, 96, dtype=DTYPE)
        s.o = nn.Linear(32, 32, dtype=DTYPE); s.up = nn.Linear(32, 128, dtype=DTYPE); s.down = nn.Linear(128, 32, dtype=DTYPE)
        if LORA:
            s.qkv, s.o = LoRA(s.qkv), LoRA(s.o)
    def forward(s, x):
        b, t, _ = x.shape
        q, k, v = s.qkv(s.n(x)).view(b, t, 3, 4, 8).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.1 if s.training else 0.0)
        x = x + s.o(a.transpose(1, 2).reshape(b, t, 32))
        return x + s.down(F.dropout(F.gelu(s.up(x)), 0.1, training=s.training))

class M(nn.Module):
    def __init__(s):
        super().__init__(); s.e = nn.Embedding(64, 32, dtype=DTYPE); s.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
        s.head = nn.Linear(32, 64, dtype=DTYPE)
        if LORA:
            s.e.requires_grad_(False); s.head.requires_grad_(False)
            for blk in s.blocks:
                for m in (blk.n, blk.up, blk.down): m.requires_grad_(False)
    def forward(s, x):
        h = s.e(x)
        for blk in s.blocks:
            if CHECKPOINT and s.training:
                h = checkpoint(blk, h, use_reentrant=CHECKPOINT == "reentrant")
            else:
                h = blk(h)
        return s.head(h).float()

def model():
    return CONVERT(M()) if CONVERT else M()

def batch(n):
    r = torch.randint(0, 64, (n, 17)); return r[:, :-1], r[:, 1:]

def loss(m, b):
    x, y = b
    return F.cross_entropy(m(x).reshape(-1, 64), y.reshape(-1))
"""


def real_peaks(spec, sizes):
    """Real training steps tracked here, a warm-up step (the optimizer's state) then one at each size; with
    ACCUMULATION_STEPS = k, k micro-batches a step, each as a loader hands it over."""
    torch.manual_seed(0)
    model = spec.model()
    opt = spec.optimizer(model)
    tracker = LiveStorageTracker()
    tracker.track([*model.parameters(), *model.buffers(), *optimizer_state(opt)])
    k = spec.accumulation_steps
    peaks = []
    for size in (sizes[0], *sizes):
        with tracker:
            b = spec.batch(size) if k == 1 else None  # the batch in hand, then the step
            tracker.reset_peak()
            opt.zero_grad(set_to_none=True)
            for _ in range(k):
                if k > 1:
                    b = value = None
                    b = spec.batch(size)
                value = spec.loss(model, b) / k if k > 1 else spec.loss(model, b)
                value.backward()
            opt.step()  # the last batch and its loss still in hand, as a training loop holds them
            del b, value
        peaks.append(tracker.peak_bytes)
    return peaks[1:]


def real_peak(spec, size):
    return real_peaks(spec, [size])[0]


def traced_peaks(spec, sizes, **kw):
    tracer = StepTracer(spec, fake=True, build_fake=True, **kw)
    return [tracer.peak(size) for size in sizes]


def traced(spec, size, **kw):
    return traced_peaks(spec, [size], **kw)[0]


VARIANTS = {
    "bf16-weights": "DTYPE = torch.bfloat16",
    "converted-in-model": "CONVERT = lambda m: m.to(torch.bfloat16)",  # Module.to swaps fake parameters
    "autocast-bf16": "AUTOCAST = torch.bfloat16",
    "checkpoint-non-reentrant": "CHECKPOINT = 'non-reentrant'",
    "checkpoint-reentrant": "CHECKPOINT = 'reentrant'",
    "lora-frozen-base": "LORA = True",
    "accumulation-4": "ACCUMULATION_STEPS = 4",
    "fused-adamw-accumulation": "ACCUMULATION_STEPS = 3\ndef optimizer(p):\n    return torch.optim.AdamW(p, fused=True)",
    "foreach-sgd-autocast": "AUTOCAST = 'bfloat16'\ndef optimizer(p):\n    return torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True)",
}


def variant(name: str) -> str:
    return BLOCK.replace('LORA = False\n', f'LORA = False\n{VARIANTS[name]}\n', 1)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_setup_traced_as_real_steps_run(write_model, name):
    spec = load_spec(write_model(variant(name)))
    assert traced_peaks(spec, [2, 5]) == real_peaks(spec, [2, 5])


def test_a_model_converted_in_model_is_built_fake_by_check(write_model):
    """`model()` returning `M().to(torch.bfloat16)` (or .half()): torch swaps each fake parameter for its
    converted twin, which the fake mode's own weak references used to refuse, so check fell back or failed."""
    result = CliRunner().invoke(app, ["check", str(write_model(variant("converted-in-model"))), "--profile",
                                      "t4-16gb", "--batch-size", "2", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert "model and optimizer built fake" in doc["method"]
    assert not any("could not be built" in note for note in doc["notes"])


SMALL = """
import copy
import torch
import torch.nn as nn

class M(nn.Module):
    def __init__(s):
        super().__init__(); s.e = nn.Embedding(64, 32); s.c = nn.Conv1d(32, 32, 3, padding=1)
        s.n = nn.LayerNorm(32); s.h = nn.Linear(32, 64)
    def forward(s, x):
        h = s.c(s.e(x).transpose(1, 2)).transpose(1, 2)
        return s.h(s.n(h)).float()

def batch(n):
    r = torch.randint(0, 64, (n, 9)); return r[:, :-1], r[:, 1:]

def loss(m, b):
    x, y = b; return nn.functional.cross_entropy(m(x).reshape(-1, 64), y.reshape(-1))

def init(module):
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02); nn.init.zeros_(module.bias)

def from_meta():
    with torch.device("meta"):
        m = M()
    m = m.to_empty(device="cpu")
    for module in m.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return m

def tied(m):
    m.h.weight = m.e.weight
    return m

SAVED = M().state_dict()
"""

BUILDS = {  # what model() returns: the ways model files build, convert and load a model
    "to-dtype-and-device": "M().to('cpu', torch.bfloat16)",
    "half-then-float": "M().half().float()",
    "double": "M().double()",
    "apply-init": "M().apply(init)",
    "tied-weights": "tied(M())",
    "weight-norm": "(lambda m: setattr(m, 'h', nn.utils.parametrizations.weight_norm(m.h)) or m)(M())",
    "loaded-state-dict": "(lambda m: m.load_state_dict(SAVED) and m)(M())",
    "deepcopy": "copy.deepcopy(M())",
    "meta-then-to-empty": "from_meta()",
}


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_model_files_build_as_they_do_and_are_traced_fake_as_real_steps_run(write_model, name):
    spec = load_spec(write_model(f"{SMALL}\ndef model():\n    return {BUILDS[name]}\n"))
    FakeTensorMode.cache_clear()  # as a fresh process starts: whether torch's swap met a weak reference
    # depended on what the class-wide dispatch cache already held
    assert traced_peaks(spec, [2, 5]) == real_peaks(spec, [2, 5])


def test_each_setup_changes_the_peak_it_should(write_model):
    """Not a no-op: each set-up moves the peak the way it moves real memory (four blocks: checkpointing
    pays where there is more than one block to recompute)."""
    deep = BLOCK.replace("BLOCKS = 1", "BLOCKS = 4")
    plain = real_peak(load_spec(write_model(deep, "plain.py")), 6)
    peaks = {name: real_peak(load_spec(write_model(variant(name).replace("BLOCKS = 1", "BLOCKS = 4"),
                                                   f"{name.replace('-', '_')}.py")), 6)
             for name in ("bf16-weights", "checkpoint-non-reentrant", "accumulation-4", "autocast-bf16")}
    assert len(set(peaks.values()) | {plain}) == 5
    assert peaks["bf16-weights"] < plain and peaks["checkpoint-non-reentrant"] < plain
    assert peaks["accumulation-4"] > plain  # gradients live through the next micro-batch's forward
    assert peaks["autocast-bf16"] != plain


def test_eval_mode_model_is_traced_in_training_mode_with_a_note(write_model):
    source = BLOCK.replace("CONVERT = None ", "CONVERT = lambda m: m.eval() ")
    assert source != BLOCK
    spec = load_spec(write_model(source))
    train_truth = real_peak(spec, 64)  # spec.model() puts it in training mode, as every probe must
    assert traced(spec, 64) == train_truth
    assert any("eval mode" in n for n in spec.notes)
    model = spec.build_model()  # eval mode, as the file returns it: dropout holds no masks
    opt = spec.optimizer(model)
    tracker = LiveStorageTracker()
    tracker.track([*model.parameters()])
    for _ in range(2):
        with tracker:
            b = spec.batch(64)
            tracker.reset_peak()
            opt.zero_grad(set_to_none=True)
            spec.loss(model, b).backward()
            opt.step()
    assert tracker.peak_bytes < train_truth


DYNAMIC = """
import torch
import torch.nn as nn

def model():
    return nn.Sequential(nn.Embedding(50, 16), nn.Flatten(0, 1), nn.Linear(16, 50))

def batch(n):
    # dynamic padding: each batch is as long as its longest example (lengths 4 to 60)
    length = int(torch.randint(4, 61, (n,)).max())
    x = torch.randint(1, 50, (n, length))
    return x, x.clone()

def loss(m, b):
    x, y = b
    return nn.functional.cross_entropy(m(x), y.reshape(-1))
"""


def test_varying_batch_shapes_are_traced_at_the_largest_seen_with_a_note(write_model):
    spec = load_spec(write_model(DYNAMIC))
    tracer = StepTracer(spec, fake=True, batch_on_host=False)
    assert tracer.shapes_vary and any("change between calls" in n for n in spec.notes)
    worst = max(StepTracer(spec, fake=False).peak_like(spec.batch(64)) for _ in range(3))
    assert tracer.peak(64) >= worst
    assert tracer.example[0].shape[1] >= 55  # the longest of many draws, not batch(1)'s


def test_a_declared_max_shape_batch_is_what_is_traced(write_model):
    spec = load_spec(write_model(DYNAMIC + "\ndef max_shape_batch(n):\n    x = torch.ones(n, 60, dtype=torch.long)\n"
                                 "    return x, x.clone()\n"))
    tracer = StepTracer(spec, fake=True, batch_on_host=False)
    assert tracer.example[0].shape == (1, 60)
    assert tracer.peak(8) == StepTracer(spec, fake=False).peak_like(spec.max_shape_batch(8))


ADAGRAD = """
import torch
def model():
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
def batch(n):
    return torch.randn(n, 10), torch.randint(0, 3, (n,))
def optimizer(p):
    return torch.optim.Adagrad(p, lr=0.1)
"""


def test_optimizer_state_made_in_its_constructor_is_traced_and_counted(write_model):
    path = write_model(ADAGRAD)
    spec = load_spec(path)
    assert traced(spec, 6) == real_peak(spec, 6)
    runner = CliRunner()
    for args in (["max-batch", path, "--device", "cpu", "--memory", "4MiB"],
                 ["check", path, "--profile", "t4-16gb", "--batch-size", "8"],
                 ["max-batch", path, "--profile", "t4-16gb"]):
        result = runner.invoke(app, [str(a) for a in args] + ["--json"])
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("line,fragment", [
    ("AUTOCAST = torch.float64", "AUTOCAST"),
    ("AUTOCAST = 'int8'", "AUTOCAST"),
    ("ACCUMULATION_STEPS = 0", "ACCUMULATION_STEPS"),
    ("ACCUMULATION_STEPS = 2.5", "ACCUMULATION_STEPS"),
])
def test_bad_setup_names_are_exit_two(write_model, line, fragment):
    path = write_model(ADAGRAD + "\n" + line + "\n")
    result = CliRunner().invoke(app, ["max-batch", str(path), "--device", "cpu", "--json"])
    assert result.exit_code == 2
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.output


def test_accumulation_is_traced_in_check(write_model):
    """Gradients held through the next micro-batch's backward pass: a peak above the plain step's."""
    wide = ADAGRAD.replace("torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)",
                           "torch.nn.Linear(10, 256), torch.nn.ReLU(), torch.nn.Linear(256, 3)")
    docs = [json.loads(CliRunner().invoke(app, ["check", str(write_model(source, name)), "--profile", "t4-16gb",
                                                "--batch-size", "256", "--json"]).stdout)
            for source, name in ((wide, "a.py"), (wide + "\nACCUMULATION_STEPS = 8\n", "b.py"))]
    assert docs[1]["traced_peak_bytes"] > docs[0]["traced_peak_bytes"]
