"""The gradient noise probe: B_simple followed along a training run, not sampled once.

The noise scale grows as the loss falls (McCandlish et al. 2018; Merrill et al. 2025), so one reading
after ten steps describes the start of training, not the run. The probe trains the user's own setting
(the base batch, the optimizer as given) and measures at steps spaced geometrically, 10, 20, 40, ...
(the first at `--noise-warmup-steps`), until the probe's budget (seconds or training steps) would be
passed by the next point; a budget in steps (one in seconds is planned as one by the measured step
times) puts the last point where it ends. At each point, `snapshots` times: draw B = k·b examples, take the k
micro-batch gradients without moving the weights, record s̄ and S, then train one step on the first
micro-batch's gradient (a step of the base setting when the noise batch is 8 base batches), so the next
snapshot sees new weights and the run stays the base setting's.

Every gradient is seen in the geometry the optimizer steps in (`advisor.preconditioners`): divided by
the divisor D the optimizer would use at that step, its second moment updated with the step's gradient;
raw for SGD, and raw with a note where no divisor is sound (the second moment is updated with the snapshot's
mean gradient, the least noisy estimate of the step's). The k micro-batch gradients are summed
and their squares summed elementwise, so D (which depends on their mean) is applied after the pass.

In a data-parallel job (McCandlish et al., appendix A) the k micro-batches are shared out: each of
the n ranks takes k/n of them on its own examples, and the sums are all-reduced: the same estimator,
each rank's gradients the small batch, their all-reduced mean the big one. The training between
points draws the same batches on every rank (same seed), so the weights agree without communication;
the snapshot steps use the all-reduced gradient.
"""

import math
import time
from dataclasses import dataclass, field

import torch

from advisor import distributed, preconditioners
from advisor.devices import Backend
from advisor.errors import ProbeFailed
from advisor.noise_scale import NoiseScale, Snapshot, noise_scale, series_trend, two_batch_estimates
from advisor.spec import ModelSpec
from advisor.step import move_batch, split_batch, train_step

FIRST_SPACING = 10   # the series' steps: warm-up, then 20, 40, 80, ... (doubling from 10)
MAX_POINTS = 16
LATE_POINTS = 2      # the advice's noise scale pools the snapshots of the last points
OVERRUN = 3.0        # a budget planned in steps still ends past this many times its seconds
END_STEPS = 4        # a budget planned in steps ends at one of this many points an octave


@dataclass(frozen=True)
class NoiseBudget:
    """How far the probe's training run may go: `seconds` of probing, or `steps` of training."""
    seconds: float | None = 30.0
    steps: int | None = None
    planned_from: float | None = None  # the seconds a steps budget was planned from (by measured step times)

    def describe(self) -> str:
        if self.seconds is not None:
            return f"{self.seconds:g} s"
        planned = f", planned from {self.planned_from:g} s by the measured step times" if self.planned_from else ""
        return f"{self.steps} training steps{planned}"


@dataclass(frozen=True)
class SeriesPoint:
    step: int           # training steps taken before this point
    examples: int       # training examples seen before this point
    loss: float         # mean loss of the point's micro-batches (its weights, fresh examples)
    scale: NoiseScale
    seconds: float      # since the probe started, at the end of this point
    estimates: tuple[Snapshot, ...] = field(default=(), repr=False)  # its snapshots, for pooling


@dataclass(frozen=True)
class NoiseResult:
    scale: NoiseScale          # the figure the advice uses: the last points' snapshots pooled
    batch_size: int
    micro_batch: int
    warmup_steps: int
    preconditioned: bool
    method: str
    seconds: float
    series: tuple[SeriesPoint, ...] = ()
    geometry: str = "raw"
    train_batch: int = 0       # the batch the probe's training run used (the base batch)
    stopped: str = ""          # why the series ended where it did
    trend: float | None = None  # d log B_simple / d log step over the resolved points

    @property
    def late_step(self) -> int:
        return self.series[-1].step if self.series else self.warmup_steps


@dataclass
class TrainedRun:
    """The model and optimizer where the probe's training run ended (the learning-rate sweep starts there)."""
    model: torch.nn.Module
    opt: torch.optim.Optimizer


def series_steps(first: int) -> list[int]:
    """The steps at which the series measures: `first`, then 20, 40, 80, ... (doubling from 10) past it."""
    steps, s = [first], FIRST_SPACING
    while len(steps) < MAX_POINTS:
        s *= 2
        if s > first:
            steps.append(s)
    return steps


def planned_steps(lattice: list[int], seconds: float, step_seconds: float, point_seconds: float) -> int:
    """The training steps a budget of `seconds` affords: the series' doubling points while they fit (each
    point's snapshots cost `point_seconds`), then one more point as far as what is left reaches, in
    quarter-octave steps (END_STEPS). The end then moves with the step times by a quarter-octave at most
    where the doubling below it jumped by a whole one (the GPT example under load ended at step 160 or 320
    from run to run, and its advice moved from batch 7 to 19), and a few per cent of timing noise leaves
    it where it was (ended anywhere, the MLP example's late runs, near a loss of zero, came out 1.5x apart
    in rate from ends 0.5% apart)."""
    planned = lattice[:1]
    for step in lattice[1:]:
        if step * step_seconds + (len(planned) + 1) * point_seconds > seconds:
            break
        planned.append(step)
    reach = (seconds - (len(planned) + 1) * point_seconds) / step_seconds if step_seconds > 0 else 0.0
    ends = [round(planned[-1] * 2 ** (k / END_STEPS)) for k in range(1, END_STEPS)]
    return max([planned[-1]] + [end for end in ends if end <= min(reach, lattice[-1])])


def steps_within(steps: list[int], budget: int, snapshots: int) -> list[int]:
    """The series' points for a budget of `budget` training steps: the doubling steps below it, then the
    budget itself, where the run ends (see `planned_steps` for why), unless the last point's snapshots (a
    step each) already reach it; only the first point when that is at or past the budget."""
    below = [s for s in steps if s < budget]
    if not below or len(below) == len(steps) or below[-1] + snapshots >= budget:
        return below or steps[:1]
    return below + [budget]


def measure_noise(spec: ModelSpec, backend: Backend, batch_size: int, micro_batches: int = 8,
                  snapshots: int = 16, warmup_steps: int = 10, warmup_batch: int = 32, seed: int = 0,
                  budget: NoiseBudget = NoiseBudget(), progress=lambda done, total: None,
                  keep: list | None = None, target_loss: float | None = None) -> NoiseResult:
    """The series; `keep`, a list, receives the TrainedRun at its end. With `target_loss` (the loss the
    user's run trains to) the series ends at the first point whose loss is at or below it: the run is
    headed there, and no further."""
    started, clock = time.perf_counter(), backend.clock
    budget_started = clock()  # the budget runs on the clock the step times were measured by
    micro = batch_size // micro_batches
    if micro < 1:
        raise ProbeFailed(f"the noise probe needs a batch of at least {micro_batches} examples, got {batch_size}")
    ranks = distributed.world()
    local = -(-micro_batches // ranks)  # this rank's micro-batches per snapshot
    micro_batches = local * ranks
    big = micro * micro_batches
    torch.manual_seed(seed)
    model = spec.model().to(backend.device)
    opt = spec.optimizer(model)
    kind, note = preconditioners.geometry(opt)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = series_steps(warmup_steps)
    if budget.steps is not None:
        steps = steps_within(steps, budget.steps, snapshots)
    series, step, examples = [], 0, 0
    stopped = f"its last point (step {steps[-1]})" if budget.steps is None else f"the probe's budget ({budget.describe()})"
    step_seconds = snapshot_seconds = 0.0
    for j, target in enumerate(steps):
        began, trained_from = clock(), step
        torch.manual_seed(seed + 7919 * (j + 1))  # the same training batches on every rank
        while step < target:
            loss = train_step(model, opt, spec.loss, move_batch(spec.batch(warmup_batch), backend.device))
            _check_finite(loss.item(), f"loss at step {step + 1} of the noise probe's training run")
            step, examples = step + 1, examples + warmup_batch
        trained = clock()
        if step > trained_from:
            step_seconds = (trained - began) / (step - trained_from)
        torch.manual_seed(seed + 1 + distributed.rank() + 104729 * (j + 1))  # each rank its own examples
        at_step, at_examples, estimates, losses = step, examples, [], []
        for snap in range(snapshots):
            snapshot, mean_loss = _snapshot(spec, model, opt, kind, params, backend, local, micro, micro_batches,
                                            big, f"{snap + 1} of point {j + 1}")
            estimates.append(snapshot)
            losses.append(mean_loss)
        step, examples = step + snapshots, examples + snapshots * micro * ranks
        snapshot_seconds = (clock() - trained) / snapshots
        series.append(SeriesPoint(at_step, at_examples, sum(losses) / len(losses), noise_scale(estimates, seed=seed),
                                  time.perf_counter() - started, tuple(estimates)))
        progress(j + 1, len(steps))
        if j + 1 == len(steps):
            break
        if target_loss is not None and series[-1].loss <= target_loss:
            stopped = f"the target loss {target_loss:g} (--target-loss): reached at step {at_step}"
            break
        ahead = max(steps[j + 1] - step, 0) * step_seconds + snapshots * snapshot_seconds
        over = _over_budget(budget, clock() - budget_started + ahead, steps[j + 1])
        if over:
            stopped = over
            break
    progress(len(series), len(series))
    pooled = [e for point in series[-LATE_POINTS:] for e in point.estimates]
    method = _method(backend, series, warmup_batch, snapshots, micro_batches, micro, opt, kind, note, local)
    if keep is not None:
        keep.append(TrainedRun(model, opt))
    scale = noise_scale(pooled, seed=seed)
    return NoiseResult(scale, big, micro, warmup_steps, kind != "raw", method, time.perf_counter() - started,
                       tuple(series), kind, warmup_batch, stopped, series_trend([(p.step, p.scale) for p in series]))


def _over_budget(budget: NoiseBudget, ends_at: float, next_step: int) -> str | None:
    """Why the next point, ending `ends_at` seconds into the probe, is not measured (None: it is)."""
    if budget.seconds is not None and ends_at > budget.seconds:
        return (f"the probe's budget ({budget.describe()}): the next point, at step {next_step}, "
                f"would end at about {ends_at:.0f} s")
    if budget.planned_from is not None and ends_at > OVERRUN * budget.planned_from:
        return (f"the machine is slower than the step times planned ({budget.describe()}): the next point "
                f"would end at about {ends_at:.0f} s, over {OVERRUN:g}x the budget")
    return None


def _method(backend, series, warmup_batch, snapshots, micro_batches, micro, opt, kind, note, local) -> str:
    """How the series was measured, as the report says it."""
    method = (f"{backend.measured_on}: {len(series)} points of the base setting's training run (batch "
              f"{warmup_batch}), steps {', '.join(str(p.step) for p in series)}; each {snapshots} snapshots of "
              f"{micro_batches} micro-batches of {micro}; the advice uses the last {min(LATE_POINTS, len(series))} "
              "points' snapshots pooled")
    if kind != "raw":
        method += f"; gradients divided by {type(opt).__name__}'s own divisor at each step ({kind} geometry)"
    if note:
        method += f"; {note}"
    if distributed.active():
        method += (f"; {local} micro-batches on each of {distributed.world()} ranks (data parallel: local gradients "
                   "the small batch, their all-reduced mean the big one)")
    return method


def _snapshot(spec, model, opt, kind, params, backend, local, micro, micro_batches, big, where):
    """One snapshot's estimates and the mean loss of its micro-batches; then one training step on the first
    micro-batch's gradient (the mean over ranks of each one's first)."""
    sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    first: list[torch.Tensor] = []
    squares = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    loss_sum = torch.zeros(1, dtype=torch.float64, device=backend.device)
    for i, chunk in enumerate(split_batch(move_batch(spec.batch(local * micro), backend.device), micro)):
        model.zero_grad(set_to_none=True)
        loss = spec.loss(model, chunk)
        loss.backward()
        _check_finite(loss.item(), f"loss at noise snapshot {where}, micro-batch {i + 1}")
        loss_sum += loss.detach().double().reshape(1)
        for p, s, q in zip(params, sums, squares):
            if p.grad is not None:
                g = p.grad.double()
                s.add_(g)
                q.add_(g * g)
        if i == 0:
            first = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    if distributed.active():
        distributed.sum_tensors(sums + squares + [loss_sum] + first, f"the noise probe's all-reduce at snapshot "
                                                                               f"{where}")
        first = [g / distributed.world() for g in first]
    small_sq = big_sq = 0.0
    for p, s, q in zip(params, sums, squares):
        mean = s / micro_batches
        d = preconditioners.divisor(opt, kind, p, mean)
        small_sq += (q if d is None else q / (d * d)).sum().item()
        big_sq += (mean if d is None else mean / d).pow(2).sum().item()
    _check_finite(small_sq, f"gradient at noise snapshot {where}")
    for p, g in zip(params, first):  # one training step of the base setting
        p.grad = g
    opt.step()
    opt.zero_grad(set_to_none=True)
    return two_batch_estimates(small_sq / micro_batches, big_sq, micro, big), loss_sum.item() / micro_batches


def _check_finite(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise ProbeFailed(f"non-finite {what} ({value}): the probe cannot measure a diverging run")
