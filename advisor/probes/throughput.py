"""The throughput probe: seconds per training step at batch sizes spaced geometrically.

Each size starts from the same saved model and optimizer state, draws one batch (data loading is not
the step), runs a warm-up step that is not timed, then times a few steps. The sizes are timed in
`rounds` interleaved passes (the first grows the sizes, the others revisit them in alternating order),
and each size keeps the *minimum* over all its timed steps, with the spread (median / minimum − 1):
another process's load only ever adds time, so the minimum is what the step costs, and interleaving
keeps a burst of load from landing on one size alone. The optimizer's share of a step is timed apart:
it is paid once per optimizer step, so it is what gradient accumulation amortises. Past the first
`minimum_points` sizes, growing stops once a step takes longer than `max_step_seconds` (or would, by
the line through the last two points); larger batches are then predicted by the fit, and the report
says so. A size that runs out of memory stops the growth there too: its memory is freed, the state
restored, and the points so far are kept.
"""

import math
import statistics
import time
from dataclasses import dataclass

import torch

from advisor import distributed
from advisor.devices import Backend
from advisor.errors import ProbeFailed
from advisor.devices.recovery import try_step
from advisor.spec import ModelSpec
from advisor.step import SavedState, move_batch


@dataclass(frozen=True)
class ThroughputPoint:
    batch: int
    step_seconds: float       # minimum of the timed steps: forward, backward and optimizer step
    optimizer_seconds: float  # minimum of the optimizer step alone
    spread: float = 0.0       # median / minimum − 1 over the timed steps: how noisy the timing was
    batch_seconds: float = 0.0  # minimum time of the model file's batch(size): data, not the step

    @property
    def samples_per_second(self) -> float:
        return self.batch / self.step_seconds


@dataclass(frozen=True)
class ThroughputResult:
    points: list[ThroughputPoint]
    stopped_early: str | None  # why the larger sizes were not timed, if they were not
    method: str
    seconds: float
    out_of_memory_at: int | None = None  # the batch whose step ran out of memory, if one did


def geometric_batches(largest: int, smallest: int = 1, minimum_points: int = 5) -> list[int]:
    """`smallest`, the powers of two above it up to `largest`, and `largest` itself; the integers
    after `smallest` fill in when that gives fewer than `minimum_points`."""
    sizes = {2**i for i in range(int(math.log2(largest)) + 1) if 2**i > smallest} | {smallest, largest}
    filler = iter(range(smallest, largest + 1))
    while len(sizes) < min(minimum_points, largest - smallest + 1):
        sizes.add(next(filler))
    return sorted(sizes)


def measure_throughput(spec: ModelSpec, backend: Backend, batch_sizes: list[int], warmup_steps: int = 1,
                       timed_steps: int = 3, max_step_seconds: float = 1.0, minimum_points: int = 5, seed: int = 0,
                       rounds: int = 3, progress=lambda done, total: None) -> ThroughputResult:
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = spec.model().to(backend.device)
    opt = spec.optimizer(model)
    saved = SavedState(model, opt)
    ranks = distributed.world()
    trained = distributed.wrap(model, backend)  # DDP in a job: its step is the one timed
    if distributed.active():
        torch.manual_seed(seed + 1 + distributed.rank())  # each rank its own batches
    timings: dict[int, tuple[list[float], list[float], list[float]]] = {}  # size -> (step, optimizer, batch() times)
    stopped, out_of_memory = None, None
    sizes = sorted(set(batch_sizes))
    total = len(sizes) * rounds

    def time_size(size: int) -> bool:
        """Time `size` once more into `timings`; False when it ran out of memory."""
        saved.restore()
        times = try_step(lambda: _time_batch(spec, backend, trained, opt, size, warmup_steps, timed_steps),
                         backend, f"the throughput probe at batch {size}", restore=saved.restore)
        times = _slowest_rank(times, size, backend.device, timed_steps)
        if times is None:
            return False
        steps, optimizer_steps, batches = timings.setdefault(size, ([], [], []))
        steps += times[0]
        optimizer_steps += times[1]
        batches.append(times[2])
        progress(sum(len(t[0]) for t in timings.values()) // timed_steps, total)
        return True

    for n, size in enumerate(sizes):  # the first round grows the sizes
        if not time_size(size):  # does not fit: larger sizes would not either
            if not timings:
                raise ProbeFailed(f"the throughput probe runs out of memory on {backend.device} at its smallest "
                                  f"batch, {size}")
            stopped, out_of_memory = f"stopped at batch {size}: it ran out of memory on {backend.device}", size
            break
        if minimum_points <= n + 1 < len(sizes):
            stopped = _too_slow(_points(timings), sizes[n + 1], max_step_seconds)
            if stopped:
                break
    kept = sorted(timings)
    total = len(kept) * rounds
    for r in range(1, rounds):  # the others revisit them, in alternating order
        for size in (reversed(kept) if r % 2 else kept):
            if not time_size(size):
                raise ProbeFailed(f"the throughput probe ran out of memory at batch {size}, which had fitted in "
                                  f"its first round: the device's free memory changed during the probe")
    progress(total, total)
    saved.restore()
    method = (f"{backend.measured_on}: minimum of {rounds} interleaved rounds of {timed_steps} timed steps, each "
              f"after {warmup_steps} warm-up")
    if distributed.active():
        method += (f"; DistributedDataParallel step on {ranks} ranks, batch = per-rank micro-batch "
                   f"(global batch {ranks}x), slowest rank's times")
    return ThroughputResult(_points(timings), stopped, method, time.perf_counter() - started, out_of_memory)


def _points(timings: dict[int, tuple[list[float], list[float], list[float]]]) -> list[ThroughputPoint]:
    return [ThroughputPoint(size, min(steps), min(optimizer), statistics.median(steps) / min(steps) - 1, min(batches))
            for size, (steps, optimizer, batches) in sorted(timings.items())]


def not_rising(points: list[ThroughputPoint], tolerance: float = 0.1) -> list[tuple[int, int]]:
    """Pairs of timed batches (smaller, larger) where the larger one's step was more than `tolerance`
    faster: a step cannot get cheaper with more examples, so the timings there are noise."""
    return [(a.batch, b.batch) for i, a in enumerate(points) for b in points[i + 1:]
            if b.step_seconds < a.step_seconds * (1 - tolerance)]


def _slowest_rank(times: tuple[list[float], list[float]] | None, size: int, device, timed_steps: int):
    """In a job every rank must take the same decisions: the slowest rank's times, step by step, and out
    of memory on one rank is out of memory for all."""
    if not distributed.active():
        return times
    values = [-1.0] * 2 * timed_steps + [1.0] if times is None else [*times[0], *times[1], 0.0]
    # (batch() is timed on this rank alone: it is the same code everywhere and not part of the step)
    values = distributed.reduce_floats(values, "max", f"the throughput probe at batch {size}", device)
    if values[-1] > 0:
        return None
    return values[:timed_steps], values[timed_steps:-1], times[2]


def _too_slow(points: list[ThroughputPoint], next_size: int, limit: float) -> str | None:
    """Why not to time `next_size`: the last step was over the limit, or the line through the last
    two points predicts the next one will be."""
    last = points[-1]
    if last.step_seconds > limit:
        return f"stopped after batch {last.batch}: a step took {last.step_seconds:.2f} s (> {limit:g} s)"
    if len(points) >= 2:
        prev = points[-2]
        slope = max((last.step_seconds - prev.step_seconds) / (last.batch - prev.batch), 0.0)
        predicted = last.step_seconds + slope * (next_size - last.batch)
        if predicted > limit:
            return (f"stopped after batch {last.batch}: batch {next_size} would take about {predicted:.2f} s "
                    f"(> {limit:g} s)")
    return None


def _time_batch(spec, backend, model, opt, size, warmup_steps, timed_steps):
    """(step times, optimizer-step times, the seconds batch(size) took)."""
    drawn = backend.clock()
    batch = move_batch(spec.batch(size), backend.device)
    batch_seconds = backend.clock() - drawn
    losses = []

    def forward_backward():
        opt.zero_grad(set_to_none=True)
        loss = spec.loss(model, batch)
        loss.backward()
        losses.append(loss.detach())

    steps, optimizer_steps = [], []
    for i in range(warmup_steps + timed_steps):
        fb = backend.timed(forward_backward)
        step = backend.timed(opt.step)
        value = losses[-1].item()
        if not math.isfinite(value):
            raise ProbeFailed(f"non-finite loss ({value}) at batch {size}, step {i + 1} of the throughput probe")
        if i >= warmup_steps:
            steps.append(fb + step)
            optimizer_steps.append(step)
    return steps, optimizer_steps, batch_seconds
