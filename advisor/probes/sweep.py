"""The sweep: short training runs that measure the learning rate, and the batch among the plateau's.

The goodput plateau (advice.py) names the batches that the noise scale and the step times cannot tell
apart, and the rule (McCandlish's for SGD, the square-root rule for Adam) gives each a rate. How far a
task strays from both is measured by short runs, every parameter group's rate scaled alike:

- **from initialisation**, the run the user will do: a fresh model trained at the candidate's batch
  (micro-batches × accumulation), scored by the mean training loss of the second half of the run (each
  step's loss is on fresh examples, so this estimates the loss the weights reach, averaged over many
  examples). Every candidate batch trains for the same *counted time* (its step count scaled by the
  step-time fit), so the scores compare what a user gets for the same seconds, which is the question
  a batch answers. This is what picks the rate.
- **from the noise probe's last weights** (the base setting, where the probe's run ended: with
  --target-loss, at the target): `hold_steps` steps, over whose second half the loss on the same
  held-out examples (paired, so that sampling noise does not decide; at 4 steps, so that one
  iterate's does not either) must not rise to 1.5× what it was *and* give back a tenth of the fall
  since initialisation. A rate that cannot hold the loss where the run is headed is unstable there,
  whatever it does early. A smaller rise is a higher rate's transient cost or higher noise floor, not
  instability (at 1.25× the MLP example's grid-best rate, 0.32, was excluded, and the advice took
  1.37x the grid's best time to the target; near a loss of zero, 1.5× alone excluded rates by where
  the probe happened to stop); scored from there alone, short runs see only that cost, and pick rates
  too low.

A run whose loss is not finite, or 1.5× where it started, diverged. The first candidate (the plateau
rule's batch) tries 5 rates, ½ to 2× the rule's; the others as many, centred on their own rule's rate
scaled as the first's sweep found. At each batch, when the lowest score is at an end of its range, the sweep
goes on past that end (half an octave a run, at most `EXTEND` more) while it improves; it picks the
lowest score among the runs stable both ways, never a rate above the smallest one that was unstable, at
the vertex of the parabola fitted (in log rate) to that run and up to two neighbours each side when it
has neighbours on both: the valley is often flat, and its lowest point hops from run to run where the
fitted vertex does not. At the plateau's other batches, rates the fit cannot tell from its vertex are a
tie, settled toward their centre (the rule's rate as the first batch calibrated it): each of their
valleys is measured on one stream of data, and its vertex scatters more than the calibration does.
Each batch then runs its best rate once more, for the same counted time, from the noise probe's last
weights. Progress is the fall of the loss from where the runs started (the fresh model's held-out loss,
or the last weights'). The plateau rule's batch (the first) stays unless another made more progress by
more than a tie (1%) both from initialisation and from those weights (short runs from initialisation
favour small batches, since the critical batch starts small); of those, the one that went furthest
from initialisation. The rates run with the optimizer's own β2; where a β2 for the chosen batch is
proposed (the half-life rule), the chosen rate runs with it both ways, and it is kept only if it wins
both ways by the same rule (scored from initialisation alone it was kept on the GPT example at batch 15,
and that run took 1298 steps to the target against 960 for the grid's best, 16 at the base's β2).
"""

import math
import time
from dataclasses import dataclass, replace

import torch

from advisor.devices import Backend
from advisor.spec import ModelSpec
from advisor.step import SavedState, move_batch, split_batch

FACTORS = (0.5, 0.71, 1.0, 1.41, 2.0)  # × a candidate's centre rate: half an octave apart
DIVERGED = 1.5                          # a score this many times where the run started has diverged
GIVE_BACK = 0.1                         # from the last weights, also this share of the progress since initialisation
TIE = 0.01                              # progress within 1% is a tie: not evidence for another batch or β2
EXTEND = 4                              # runs past an end of a batch's range, at most
HELD_OUT = 256                          # examples (at least) the starting losses are measured on
HELD_OUT_POINTS = 4                     # a hold run's held-out loss: the mean at this many of its late steps
TYPICAL_RUNS = 19                       # about 7 at the first batch, 6 at each of two others: for a budget


@dataclass(frozen=True)
class Candidate:
    """A batch to try: micro-batches × accumulation, the rate its runs centre on, and how many steps from
    initialisation (candidates get equal counted time), with the β2 proposed for it (None: the optimizer's)."""
    micro: int
    accumulation: int
    centre: float
    steps: int
    beta2: float | None = None

    @property
    def batch(self) -> int:
        return self.micro * self.accumulation


@dataclass(frozen=True)
class SweepRun:
    learning_rate: float
    loss: float        # from initialisation: mean training loss of the run's second half (inf: not finite)
    held: float        # from the probe's last weights: the held-out loss over the second half of `hold_steps`
    diverged: bool     # unstable either way


@dataclass(frozen=True)
class BatchTrial:
    """One candidate batch's runs, its best stable rate (None when every rate diverged) and that rate's score;
    `late_loss`: the same rate and counted time from the noise probe's last weights (where the run is headed)."""
    candidate: Candidate
    runs: tuple[SweepRun, ...]
    chosen: float | None
    loss: float
    late_loss: float = math.nan


@dataclass(frozen=True)
class SweepResult:
    runs: tuple[SweepRun, ...]  # at the chosen batch
    chosen: float | None    # the rate; None when every rate diverged at every batch
    beta2_kept: bool        # the proposed β2 scored better than the optimizer's own at the chosen rate
    beta2_loss: float | None  # its score there (None: none proposed)
    start_loss: float       # the fresh model's loss (what the runs from initialisation improve on)
    steps: int              # from initialisation, at the chosen batch
    method: str
    seconds: float
    hold_loss: float = math.nan  # the loss at the probe's last weights
    hold_steps: int = 0
    trials: tuple[BatchTrial, ...] = ()  # every batch tried, the plateau rule's first
    chosen_batch: int | None = None
    beta2_late_loss: float | None = None  # the proposed β2's score from the probe's last weights


def sweep(spec: ModelSpec, backend: Backend, model: torch.nn.Module, opt: torch.optim.Optimizer,
          candidates: list[Candidate], seed: int = 0, hold_steps: int = 20,
          progress=lambda done, total: None) -> SweepResult:
    """Rates at each candidate batch, then the batch (see the module's docstring). `model` and `opt` (the
    noise probe's, at its last weights) are put back as they were."""
    started = time.perf_counter()
    first = candidates[0]
    runner = _Runner(spec, backend, model, opt, seed, hold_steps, held_out=(first.micro, _held_out_batches(first.micro)))
    planned = len(FACTORS) * len(candidates)
    report = lambda: progress(runner.count, max(planned, runner.count))  # noqa: E731
    trials = [_rates_at(runner, candidates[0], report)]
    correction = trials[0].chosen / candidates[0].centre if trials[0].chosen else 1.0
    for other in candidates[1:]:
        shifted = Candidate(other.micro, other.accumulation, other.centre * correction, other.steps, other.beta2)
        trials.append(_rates_at(runner, shifted, report, anchor=shifted.centre))
    # where the run is headed too: each batch's best rate for the same counted time from the last weights
    trials = [replace(t, late_loss=runner.train_late(t.candidate, t.chosen)) if t.chosen is not None else t
              for t in trials]
    best = _best_trial(trials, runner.start_loss, runner.hold_loss)
    beta2_loss = beta2_late_loss = None
    beta2_kept = False
    if best is not None and best.candidate.beta2 is not None:
        c = best.candidate
        beta2_loss = runner.train_fresh(c, best.chosen, c.beta2)
        beta2_late_loss = runner.train_late(c, best.chosen, c.beta2)
        beta2_kept = (_beats(runner.start_loss - beta2_loss, runner.start_loss - best.loss)
                      and _beats(runner.hold_loss - beta2_late_loss, runner.hold_loss - best.late_loss))
    runner.late.put_back()
    shown = best or trials[0]
    return SweepResult(shown.runs, best.chosen if best else None, beta2_kept, beta2_loss, runner.start_loss,
                       shown.candidate.steps, _method(backend, trials, hold_steps), time.perf_counter() - started,
                       runner.hold_loss, hold_steps, tuple(trials), best.candidate.batch if best else None,
                       beta2_late_loss)


def _rates_at(runner: "_Runner", candidate: Candidate, progress, anchor: float | None = None) -> BatchTrial:
    """The runs at one batch and its best rate; with `anchor` (the plateau's other batches: their centre, the
    rule's rate calibrated by the first batch's sweep), a tie is settled toward it (see `_best_rate`)."""
    runs: list[SweepRun] = []
    for factor in FACTORS:
        runs.append(runner.run(candidate, candidate.centre * factor))
        progress()
    for step in (math.sqrt(2), 1 / math.sqrt(2)):  # past the end where the best lies, while it improves
        for _ in range(EXTEND):
            ordered = sorted(runs, key=lambda r: r.learning_rate, reverse=step < 1)
            best = min((r for r in runs if not r.diverged), key=lambda r: r.loss, default=None)
            if best is None or best is not ordered[-1]:
                break
            runs.append(runner.run(candidate, best.learning_rate * step))
            progress()
    runs.sort(key=lambda r: r.learning_rate)
    chosen, loss = _best_rate(runs, anchor) or (None, math.inf)
    return BatchTrial(candidate, tuple(runs), chosen, loss)


def _best_rate(runs: list[SweepRun], anchor: float | None = None) -> tuple[float, float] | None:
    """(rate, score): of the stable runs below the first unstable rate, the lowest score's, moved to the vertex
    of the parabola fitted (least squares, in log rate) to it and up to two neighbours on each side. The
    valley is often flat (on the MLP example 0.32 to 0.64 scored within 2% of each other, and the lowest
    point hopped between 0.32 and 0.45 from one run to the next), and one short run can land far off the
    curve (the GPT example at batch 6: 2.75 at 0.0021 between 2.60 and 2.56 either side, from a later
    escape from a plateau), so the fit uses as many points as the valley has. The score is the lowest
    measured.

    With an `anchor`, the rates the fit cannot tell from its vertex (fitted score within one residual
    standard deviation of the minimum) are a tie, settled by the rate of those nearest the anchor. At the
    plateau's other batches one data stream's valley is as deep as its scatter: on the GPT example the
    vertex at batch 6 or 7 came out anywhere from 0.00135 to 0.00232 over runs of one file, while the
    first batch's rate, transferred by the rule, stayed within 1.2x, and the time to the target at batch
    6 was the same from 0.0012 to 0.0024."""
    stable = [r for r in runs if not r.diverged]
    if not stable:
        return None
    first_unstable = next((r.learning_rate for r in runs if r.diverged and r.learning_rate > min(
        s.learning_rate for s in stable)), math.inf)
    candidates = sorted((r for r in stable if r.learning_rate < first_unstable), key=lambda r: r.learning_rate)
    i = min(range(len(candidates)), key=lambda k: candidates[k].loss)
    window = candidates[max(0, i - 2):i + 3]
    if 0 < i < len(candidates) - 1:
        return _vertex(window, anchor) or candidates[i].learning_rate, candidates[i].loss
    return candidates[i].learning_rate, candidates[i].loss


def _vertex(window: list[SweepRun], anchor: float | None = None) -> float | None:
    """The minimum of the least-squares parabola through the runs' scores against log rate, kept inside their
    span; None when the fit does not open upwards (no minimum). With `anchor`, the point nearest it of
    those whose fitted score is within the fit's residual standard deviation of that minimum."""
    xs, ys = [math.log(r.learning_rate) for r in window], [r.loss for r in window]
    mean = sum(xs) / len(xs)
    xs = [x - mean for x in xs]  # centred, for a well-conditioned fit
    sums = [sum(x ** k for x in xs) for k in range(5)]
    rhs = [sum(y * x ** k for x, y in zip(xs, ys)) for k in range(3)]
    matrix = [[sums[r + c] for c in range(3)] for r in range(3)]
    solution = _solve3(matrix, rhs)
    if solution is None or solution[2] <= 0:
        return None
    c, b, a = solution
    best = -b / (2 * a)
    if anchor is not None and len(xs) > 3:
        residual = math.sqrt(sum((y - (c + b * x + a * x * x)) ** 2 for x, y in zip(xs, ys)) / (len(xs) - 3))
        reach = math.sqrt(residual / a)  # where the parabola rises one residual above its minimum
        best = min(max(math.log(anchor) - mean, best - reach), best + reach)
    return math.exp(min(max(best, xs[0]), xs[-1]) + mean)


def _solve3(matrix: list[list[float]], rhs: list[float]) -> list[float] | None:
    """Cramer's rule for a 3 x 3 system; None when it is singular."""
    def det(m):
        return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))
    d = det(matrix)
    if d == 0:
        return None
    return [det([[rhs[r] if c == k else matrix[r][c] for c in range(3)] for r in range(3)]) / d for k in range(3)]


def _best_trial(trials: list[BatchTrial], start_loss: float, hold_loss: float) -> BatchTrial | None:
    """The plateau rule's batch (the first), unless another trained further by more than a tie both from
    initialisation and from the probe's last weights (progress: the fall from where the runs started); then,
    of those, the one that trained furthest from initialisation. Short runs from initialisation alone favour
    small batches (the critical batch is small early in training: on the GPT example 6 trains furthest in
    them, while 16 reaches the target 1.10x sooner); from the last weights, where it is larger, that bias
    shrinks, so a batch must win both ways."""
    scored = [t for t in trials if t.chosen is not None]
    if not scored:
        return None
    first = trials[0]
    if first.chosen is None:
        return min(scored, key=lambda t: t.loss)
    better = [t for t in scored[1:] if _beats(start_loss - t.loss, start_loss - first.loss)
              and _beats(hold_loss - t.late_loss, hold_loss - first.late_loss)]
    return min(better, key=lambda t: t.loss) if better else first


def _beats(progress: float, other: float) -> bool:
    """More progress than `other` by more than a tie (1% of it)."""
    return math.isfinite(progress) and progress > other + TIE * abs(other)


def _method(backend: Backend, trials: list[BatchTrial], hold_steps: int) -> str:
    first = trials[0]
    rates = " ".join(f"{r.learning_rate / first.candidate.centre:.2g}" for r in first.runs)
    text = (f"{backend.measured_on}: {len(first.runs)} rates ({rates} x the rule's) at batch "
            f"{first.candidate.micro} x {first.candidate.accumulation}, each {first.candidate.steps} steps from "
            f"initialisation (scored by the mean training loss of the second half) and {hold_steps} from the noise "
            "probe's last weights (which must hold the loss there)")
    if len(trials) > 1:
        others = ", ".join(f"batch {t.candidate.batch}: {len(t.runs)} rates of {t.candidate.steps} steps"
                           for t in trials[1:])
        text += f"; the plateau's other batches for the same counted time ({others})"
    return text


def _held_out_batches(micro: int) -> int:
    """Enough micro-batches for HELD_OUT examples, and at least 4: a loss measured on a few examples is noisy
    (on 16 examples of a linear regression, stable rates looked unstable)."""
    return min(max(4, math.ceil(HELD_OUT / micro)), 64)


class _Runner:
    """The two starting points every run starts from again, the held-out batches, and a count of runs."""

    def __init__(self, spec, backend, model, opt, seed: int, hold_steps: int, held_out: tuple[int, int]):
        self.spec, self.backend, self.seed, self.hold_steps, self.count = spec, backend, seed, hold_steps, 0
        torch.manual_seed(seed + 31337)
        size, count = held_out
        held_out = [move_batch(spec.batch(size), backend.device) for _ in range(count)]
        self.late = _Start(model, opt)
        torch.manual_seed(seed)
        fresh_model = spec.model().to(backend.device)
        self.fresh = _Start(fresh_model, spec.optimizer(fresh_model))
        self.held_out = held_out
        self.hold_loss = _held_out_loss(spec, model, held_out)
        self.start_loss = _held_out_loss(spec, fresh_model, held_out)
        # Unstable where the run is headed: 1.5x the loss there, and a tenth of the way back to where training
        # began. 1.5x alone is ill-conditioned as the loss nears zero: at 0.026 on the MLP example a rate's
        # higher noise floor passed it (0.041), as the run's own pace at a loss of 0.065 did not.
        self.late_limit = max(DIVERGED * self.hold_loss, self.hold_loss + GIVE_BACK * (self.start_loss - self.hold_loss))

    def train_fresh(self, c: Candidate, rate: float, beta2: float | None = None) -> float:
        """`c.steps` steps from initialisation: the run the user will do."""
        return self.fresh.train(self.spec, self.backend, rate, c.micro, c.accumulation, c.steps, self.seed, beta2)

    def train_late(self, c: Candidate, rate: float, beta2: float | None = None) -> float:
        """`c.steps` steps from the probe's last weights: the same counted time as its runs from initialisation."""
        return self.late.train(self.spec, self.backend, rate, c.micro, c.accumulation, c.steps, self.seed, beta2)

    def run(self, c: Candidate, rate: float) -> SweepRun:
        self.count += 1
        score = self.train_fresh(c, rate)
        held = self.late.train(self.spec, self.backend, rate, c.micro, c.accumulation, self.hold_steps, self.seed,
                               held_out=self.held_out)  # the same examples as hold_loss: paired
        unstable = (not math.isfinite(score) or score > DIVERGED * self.start_loss or not math.isfinite(held)
                    or held > self.late_limit)
        return SweepRun(rate, score, held, unstable)


class _Start:
    """A model and optimizer to run from, again and again: each run starts from the same state."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer):
        self.model, self.opt = model, opt
        self.saved = SavedState(model, opt)
        first = float(opt.param_groups[0]["lr"]) or 1.0
        self.scales = [group["lr"] / first for group in opt.param_groups]  # groups keep their ratios
        self.originals = [(group["lr"], group.get("betas")) for group in opt.param_groups]

    def train(self, spec, backend, rate, micro, accumulation, steps, seed, beta2: float | None = None,
              held_out: list | None = None) -> float:
        self.put_back()
        for group, scale in zip(self.opt.param_groups, self.scales):
            group["lr"] = rate * scale
            if beta2 is not None and "betas" in group:
                group["betas"] = (group["betas"][0], beta2)
        torch.manual_seed(seed + 4242)
        return _train(spec, backend, self.model, self.opt, micro, accumulation, steps, held_out)

    def put_back(self) -> None:
        self.saved.restore()
        for group, (lr, betas) in zip(self.opt.param_groups, self.originals):
            group["lr"] = lr
            if betas is not None:
                group["betas"] = betas


def _train(spec, backend, model, opt, micro, accumulation, steps, held_out: list | None = None) -> float:
    """The mean training loss of the second half of `steps` training steps (inf once one is not finite); with
    `held_out`, the mean loss on those examples after 4 steps spread over the second half instead (the same
    examples as another measurement there, so the two are paired; several iterates, so one step's noise
    does not decide)."""
    losses = []
    checked = set(range(steps - 1, (steps - 1) // 2, -max(1, steps // 8))[:HELD_OUT_POINTS]) or {steps - 1}
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for chunk in split_batch(move_batch(spec.batch(micro * accumulation), backend.device), micro):
            value = spec.loss(model, chunk) / accumulation
            value.backward()
            total += value.item()
        if not math.isfinite(total):
            return math.inf
        opt.step()
        losses.append(_held_out_loss(spec, model, held_out) if held_out and step in checked else total)
    late = [losses[i] for i in sorted(checked)] if held_out else losses[len(losses) // 2:]
    return sum(late) / len(late)


@torch.no_grad()
def _held_out_loss(spec, model, held_out) -> float:
    values = [spec.loss(model, b).item() for b in held_out]
    return sum(values) / len(values) if all(math.isfinite(v) for v in values) else math.inf
