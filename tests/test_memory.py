"""Tracked peak memory: the tracker's arithmetic, fake vs real steps, and the largest batch against
a bisection over real steps."""

import pytest
import torch

from advisor.units import Budget
from advisor.probes.max_batch import find_max_batch
from advisor.memory.search import largest_fitting_batch
from advisor.memory.trace import StepTracer
from advisor.memory.tracker import LiveStorageTracker
from advisor.spec import load_spec
from tests.models import MLP

CNN = """
import torch
BASE_BATCH_SIZE = 8

def model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10))

def batch(n):
    return torch.randn(n, 3, 16, 16), torch.randint(0, 10, (n,))

def optimizer(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)
"""

# Inputs and targets as views of one freshly made storage, as token models cut them: the step holds
# the rows once, not two compact copies.
VIEWS = """
import torch

def model():
    return torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Flatten(), torch.nn.Linear(16 * 8, 50))

def batch(n):
    rows = torch.randint(0, 50, (n, 9))
    return rows[:, :-1], rows[:, -1]
"""

# A target sliced out of a wider tensor (the last column of the rows the input was made from): on the host
# the step holds all the rows for it; a copy to a GPU holds the column alone.
SLICED = """
import torch

def model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 50, 50))

def batch(n):
    rows = torch.randint(0, 50, (n, 9))
    return torch.nn.functional.one_hot(rows[:, :-1], 50).float(), rows[:, -1]
"""

# Batches sliced out of a dataset that is in memory before and after the step: not the step's memory.
DATASET = """
import torch
DATA = torch.randn(50_000, 20)
LABELS = torch.randint(0, 2, (50_000,))

def model():
    return torch.nn.Linear(20, 2)

def batch(n):
    i = int(torch.randint(0, 50_000 - n, ()))
    return DATA[i:i + n], LABELS[i:i + n]
"""


def test_tracker_counts_live_bytes_and_forgets_freed_ones():
    tracker = LiveStorageTracker()
    with tracker:
        a = torch.empty(1000, dtype=torch.float32)      # 4000 bytes
        b = torch.empty(500, dtype=torch.float64)       # 4000 bytes
        view = a[10:20]                                 # shares a's storage: not counted again
        assert tracker.current_bytes == 8000
        del b
        assert tracker.current_bytes == 4000
        c = torch.empty(3000, dtype=torch.uint8)
        assert tracker.peak_bytes == 8000 and tracker.current_bytes == 7000
        tracker.reset_peak()
        assert tracker.peak_bytes == 7000
    del a, view, c


@pytest.mark.parametrize("source", [MLP, CNN, VIEWS, SLICED], ids=["mlp", "cnn", "views", "sliced"])
def test_fake_trace_equals_real_tracked_steps(write_model, source):
    spec = load_spec(write_model(source))
    fake, real = StepTracer(spec, fake=True), StepTracer(spec, fake=False)
    for size in (1, 3, 17, 64):
        assert fake.peak(size) == real.peak(size)


def test_on_the_host_a_slice_holds_its_rows_and_on_a_device_only_itself(write_model):
    spec = load_spec(write_model(SLICED))
    host, device = StepTracer(spec), StepTracer(spec, batch_on_host=False)
    assert host.layout == [(0, 8 * 50 * 4), (1, 9 * 8)]  # the one-hot input; the rows behind the target
    per_example = {name: t.peak(101) - t.peak(100) for name, t in (("host", host), ("device", device))}
    assert per_example["host"] - per_example["device"] == 8 * 8  # the 8 other int64 of each row


def test_a_slice_of_a_dataset_in_memory_is_not_the_steps_memory(write_model):
    spec = load_spec(write_model(DATASET))
    tracer = StepTracer(spec)
    assert tracer.layout == [None, None]  # its storage does not grow with the batch
    dataset_bytes = 50_000 * 20 * 4
    assert tracer.peak(64) < dataset_bytes / 10
    assert tracer.peak(64) == StepTracer(spec, batch_on_host=False).peak(64)


def test_fake_trace_at_a_huge_batch_allocates_nothing_and_is_fast(write_model):
    import time
    spec = load_spec(write_model(MLP))
    tracer = StepTracer(spec, fake=True)
    started = time.perf_counter()
    peak = tracer.peak(10**8)  # about 100 GB were it real
    assert time.perf_counter() - started < 2.0
    assert peak > 10**8 * 20 * 4


@pytest.mark.parametrize("source", [MLP, CNN], ids=["mlp", "cnn"])
def test_largest_batch_matches_a_bisection_over_real_steps(write_model, source):
    """DESIGN/issue 2: never above the largest batch whose tracked real peak fits, at most 3% below."""
    spec = load_spec(write_model(source))
    real = StepTracer(spec, fake=False)
    budget = real.peak(1) + 300 * (real.peak(65) - real.peak(64)) + 12345  # room for about 300 examples
    result = find_max_batch(spec, Budget(budget, "test"), margin=0.1)

    lo, hi = 1, 4096  # plain bisection on real steps, independent of the searched code path
    assert real.peak(lo) <= budget < real.peak(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if real.peak(mid) <= budget else (lo, mid)
    truth = lo
    assert result.max_batch <= truth
    assert result.max_batch >= 0.97 * truth
    assert result.max_batch == truth  # on the CPU the fake trace is exact
    assert real.peak(result.safe_max_batch) <= 0.9 * budget < real.peak(result.safe_max_batch + 1)


def test_search_on_real_steps_agrees_with_fake(write_model):
    spec = load_spec(write_model(MLP))
    budget = 3_000_000
    fake = largest_fitting_batch(StepTracer(spec, fake=True).peak, budget).max_batch
    real = largest_fitting_batch(StepTracer(spec, fake=False).peak, budget).max_batch
    assert fake == real > 100
