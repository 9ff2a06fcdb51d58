"""Tracked peak memory: the tracker's arithmetic, fake vs real steps, and the largest batch against
a bisection over real steps."""

import pytest
import torch

from advisor.device import Budget
from advisor.memory.max_batch import find_max_batch
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


@pytest.mark.parametrize("source", [MLP, CNN], ids=["mlp", "cnn"])
def test_fake_trace_equals_real_tracked_steps(write_model, source):
    spec = load_spec(write_model(source))
    fake, real = StepTracer(spec, fake=True), StepTracer(spec, fake=False)
    for size in (1, 3, 17, 64):
        assert fake.peak(size) == real.peak(size)


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
