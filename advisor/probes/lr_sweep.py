"""The learning-rate sweep: a few rates around the rule's, each tried as short runs.

The rule (McCandlish's for SGD, the square-root rule for Adam) gives a centre; how far a task strays
from it is measured, two ways for each rate, at the recommended batch (micro-batches × accumulation),
every parameter group's rate scaled alike, the same batches for every rate:

- **from initialisation**, the run the user will do: `steps` steps from a fresh model, scored by the
  mean training loss of their second half (each step's loss is on fresh examples, so this estimates
  the loss the weights reach, averaged over many examples). This is what picks the rate.
- **from the noise probe's last weights** (the base setting, where the probe's run ended: with
  --target-loss, at the target): `hold_steps` steps, which must not end more than 25% above the loss
  they started from. A rate that cannot hold the loss where the run is headed is unstable there,
  whatever it does early. (Scored from there alone, a short run sees only a higher rate's transient cost, and picks
  rates too low.)

A run whose loss is not finite, or 1.5× where it started, diverged. When the lowest score is at an
end of the range, the sweep goes on past that end (half an octave a run, at most `EXTEND` more) while
it improves. It picks the lowest score among the runs stable both ways (scores within 1% of the lowest
are a tie, settled by the rate nearest the rule's: a tie is not evidence), and never a rate above the
smallest one that was unstable. The rates run with the optimizer's own β2; where a β2 for the new
batch is proposed (the half-life rule), the chosen rate runs once more with it, and it is kept only if
it scores lower by more than a tie (on the GPT example it did not: 17.96 s to the target against 13.24 s).
"""

import math
import time
from dataclasses import dataclass

import torch

from advisor.device import Backend
from advisor.spec import ModelSpec
from advisor.step import SavedState, move_batch, split_batch

FACTORS = (0.5, 0.71, 1.0, 1.41, 2.0)  # × the rule's rate: half an octave apart
DIVERGED = 1.5                          # a score this many times the starting loss has diverged
TIE = 0.01                              # scores within 1% of the lowest are a tie
HOLD = 1.25                             # from the probe's last weights, a rate may raise the loss this much
EXTEND = 4                              # runs past an end of the range, at most


@dataclass(frozen=True)
class SweepRun:
    learning_rate: float
    loss: float        # from initialisation: mean training loss of the run's second half (inf: not finite)
    held: float        # from the probe's last weights: mean loss of the second half
    diverged: bool     # unstable either way


@dataclass(frozen=True)
class SweepResult:
    runs: tuple[SweepRun, ...]
    chosen: float | None    # None when every rate diverged
    beta2_kept: bool        # the proposed β2 scored better than the optimizer's own at the chosen rate
    beta2_loss: float | None  # its score there (None: none proposed)
    start_loss: float       # the fresh model's loss (what the runs from initialisation improve on)
    steps: int
    method: str
    seconds: float
    hold_loss: float = math.nan  # the loss at the probe's last weights
    hold_steps: int = 0


def sweep_rates(spec: ModelSpec, backend: Backend, model: torch.nn.Module, opt: torch.optim.Optimizer,
                centre: float, micro: int, accumulation: int, steps: int, seed: int = 0,
                beta2: float | None = None, hold_steps: int = 20, progress=lambda done, total: None) -> SweepResult:
    started = time.perf_counter()
    torch.manual_seed(seed + 31337)
    held_out = [move_batch(spec.batch(micro), backend.device) for _ in range(max(2, 4 // accumulation))]
    late = _Start(model, opt)
    torch.manual_seed(seed)
    fresh_model = spec.model().to(backend.device)
    fresh = _Start(fresh_model, spec.optimizer(fresh_model))
    hold_loss = _held_out_loss(spec, model, held_out)
    start_loss = _held_out_loss(spec, fresh_model, held_out)
    runs: list[SweepRun] = []

    def run(rate: float) -> SweepRun:
        score = fresh.train(spec, backend, rate, micro, accumulation, steps, seed)
        held = late.train(spec, backend, rate, micro, accumulation, hold_steps, seed)
        unstable = (not math.isfinite(score) or score > DIVERGED * start_loss or not math.isfinite(held)
                    or held > HOLD * hold_loss)
        runs.append(SweepRun(rate, score, held, unstable))
        progress(len(runs), len(FACTORS))
        return runs[-1]

    for factor in FACTORS:
        run(centre * factor)
    for step in (math.sqrt(2), 1 / math.sqrt(2)):  # past the end where the best lies, while it improves
        for _ in range(EXTEND):
            ordered = sorted(runs, key=lambda r: r.learning_rate, reverse=step < 1)
            best = min((r for r in runs if not r.diverged), key=lambda r: r.loss, default=None)
            if best is None or best is not ordered[-1]:
                break
            run(best.learning_rate * step)
    runs.sort(key=lambda r: r.learning_rate)
    late.put_back()
    stable = [r for r in runs if not r.diverged]
    chosen = None
    if stable:
        first_unstable = next((r.learning_rate for r in runs if r.diverged and r.learning_rate > min(
            s.learning_rate for s in stable)), math.inf)
        candidates = [r for r in stable if r.learning_rate < first_unstable]
        lowest = min(r.loss for r in candidates)
        tied = [r for r in candidates if r.loss <= lowest * (1 + TIE)]
        chosen = min(tied, key=lambda r: abs(math.log(r.learning_rate / centre))).learning_rate
    beta2_loss, beta2_kept = None, False
    if chosen is not None and beta2 is not None:
        beta2_loss = fresh.train(spec, backend, chosen, micro, accumulation, steps, seed, beta2)
        own = next(r.loss for r in runs if r.learning_rate == chosen)
        beta2_kept = math.isfinite(beta2_loss) and beta2_loss < own * (1 - TIE)
    method = (f"{backend.measured_on}: {len(runs)} rates ({' '.join(f'{r.learning_rate / centre:.2g}' for r in runs)} "
              f"x the rule's) at batch {micro} x {accumulation}, each {steps} steps from initialisation (scored by "
              f"the mean training loss of the second half) and {hold_steps} from the noise probe's last weights "
              "(which must hold the loss there)")
    return SweepResult(tuple(runs), chosen, beta2_kept, beta2_loss, start_loss, steps, method,
                       time.perf_counter() - started, hold_loss, hold_steps)


class _Start:
    """A model and optimizer to run from, again and again: each run starts from the same state."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer):
        self.model, self.opt = model, opt
        self.saved = SavedState(model, opt)
        first = float(opt.param_groups[0]["lr"]) or 1.0
        self.scales = [group["lr"] / first for group in opt.param_groups]  # groups keep their ratios
        self.originals = [(group["lr"], group.get("betas")) for group in opt.param_groups]

    def train(self, spec, backend, rate, micro, accumulation, steps, seed, beta2: float | None = None) -> float:
        self.put_back()
        for group, scale in zip(self.opt.param_groups, self.scales):
            group["lr"] = rate * scale
            if beta2 is not None and "betas" in group:
                group["betas"] = (group["betas"][0], beta2)
        torch.manual_seed(seed + 4242)
        return _train(spec, backend, self.model, self.opt, micro, accumulation, steps)

    def put_back(self) -> None:
        self.saved.restore()
        for group, (lr, betas) in zip(self.opt.param_groups, self.originals):
            group["lr"] = lr
            if betas is not None:
                group["betas"] = betas


def _train(spec, backend, model, opt, micro, accumulation, steps) -> float:
    """The mean loss of the second half of `steps` training steps (inf once one is not finite)."""
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for chunk in split_batch(move_batch(spec.batch(micro * accumulation), backend.device), micro):
            value = spec.loss(model, chunk) / accumulation
            value.backward()
            total += value.item()
        if not math.isfinite(total):
            return math.inf
        opt.step()
        losses.append(total)
    late = losses[len(losses) // 2:]
    return sum(late) / len(late)


@torch.no_grad()
def _held_out_loss(spec, model, held_out) -> float:
    values = [spec.loss(model, b).item() for b in held_out]
    return sum(values) / len(values) if all(math.isfinite(v) for v in values) else math.inf
