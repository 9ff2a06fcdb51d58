"""The throughput probe: seconds per training step at batch sizes spaced geometrically.

Each size starts from the same saved model and optimizer state, draws one batch (data loading is not
the step), runs warm-up steps that are not timed, then times several steps and keeps the median.
The optimizer's share of a step is timed apart: it is paid once per optimizer step, so it is what
gradient accumulation amortises. Past the first `minimum_points` sizes, growing stops once a step
takes longer than `max_step_seconds` (or would, by the line through the last two points); larger
batches are then predicted by the fit, and the report says so. A size that runs out of memory stops
the growth there too: its memory is freed, the state restored, and the points so far are kept.
"""

import math
import statistics
import time
from dataclasses import dataclass

import torch

from advisor import distributed
from advisor.device import Backend
from advisor.errors import ProbeFailed
from advisor.memory.oom import try_step
from advisor.spec import ModelSpec
from advisor.step import SavedState, move_batch


@dataclass(frozen=True)
class ThroughputPoint:
    batch: int
    step_seconds: float       # median of the timed steps: forward, backward and optimizer step
    optimizer_seconds: float  # median of the optimizer step alone

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
                       timed_steps: int = 5, max_step_seconds: float = 1.0, minimum_points: int = 5, seed: int = 0,
                       progress=lambda done, total: None) -> ThroughputResult:
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = spec.model().to(backend.device)
    opt = spec.optimizer(model)
    saved = SavedState(model, opt)
    ranks = distributed.world()
    trained = distributed.wrap(model, backend.device)  # DDP in a job: its step is the one timed
    if distributed.active():
        torch.manual_seed(seed + 1 + distributed.rank())  # each rank its own batches
    points, stopped, out_of_memory = [], None, None
    sizes = sorted(set(batch_sizes))
    for n, size in enumerate(sizes):
        saved.restore()
        point = try_step(lambda: _time_batch(spec, backend, trained, opt, size, warmup_steps, timed_steps),
                         backend.device, f"the throughput probe at batch {size}", restore=saved.restore)
        point = _slowest_rank(point, size, backend.device)
        if point is None:  # does not fit: larger sizes would not either
            if not points:
                raise ProbeFailed(f"the throughput probe runs out of memory on {backend.device} at its smallest "
                                  f"batch, {size}")
            stopped, out_of_memory = f"stopped at batch {size}: it ran out of memory on {backend.device}", size
            break
        points.append(point)
        progress(n + 1, len(sizes))
        if minimum_points <= n + 1 < len(sizes):
            stopped = _too_slow(points, sizes[n + 1], max_step_seconds)
            if stopped:
                break
    saved.restore()
    method = f"{backend.measured_on}: median of {timed_steps} timed steps after {warmup_steps} warm-up"
    if distributed.active():
        method += (f"; DistributedDataParallel step on {ranks} ranks, batch = per-rank micro-batch "
                   f"(global batch {ranks}x), slowest rank's median")
    return ThroughputResult(points, stopped, method, time.perf_counter() - started, out_of_memory)


def _slowest_rank(point: ThroughputPoint | None, size: int, device) -> ThroughputPoint | None:
    """In a job every rank must take the same decisions: the slowest rank's times, and out of memory
    on one rank is out of memory for all."""
    if not distributed.active():
        return point
    values = [-1.0, -1.0, 1.0] if point is None else [point.step_seconds, point.optimizer_seconds, 0.0]
    step, optimizer, failed = distributed.reduce_floats(values, "max", f"the throughput probe at batch {size}",
                                                        device)
    return None if failed else ThroughputPoint(size, step, optimizer)


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


def _time_batch(spec, backend, model, opt, size, warmup_steps, timed_steps) -> ThroughputPoint:
    batch = move_batch(spec.batch(size), backend.device)
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
    return ThroughputPoint(size, statistics.median(steps), statistics.median(optimizer_steps))
