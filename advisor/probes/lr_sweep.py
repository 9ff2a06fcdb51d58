"""The learning-rate sweep: a few rates around the rule's, each a short run from the same weights.

The rule (McCandlish's for SGD, the square-root rule for Adam) gives a centre; how far a task strays
from it is measured. Every run starts from the weights and optimizer state where the noise probe's
training run ended (the base setting, some way into training), trains `steps` steps at the
recommended batch (micro-batches × accumulation) with every parameter group's rate scaled alike, and
is scored by the mean training loss of its second half (each step's loss is on fresh examples, so this
estimates the loss the weights reach, averaged over many examples) and the same batches for every
rate. A run whose loss is not finite, or whose score is 1.5× the held-out loss it started from,
diverged. When the lowest score is at an end of the range, the sweep goes on past that end (half an
octave a run, at most `EXTEND` more) until a run scores worse or diverges. It picks the lowest score
among the stable runs (scores within 10% of its improvement on the starting loss are a tie, settled
by the rate nearest the rule's: a tie is not evidence), and never a rate above the largest stable one.
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
TIE = 0.1                               # of the best improvement on the starting loss
EXTEND = 4                              # runs past an end of the range, at most


@dataclass(frozen=True)
class SweepRun:
    learning_rate: float
    loss: float        # mean training loss of the run's second half (inf: not finite)
    diverged: bool


@dataclass(frozen=True)
class SweepResult:
    runs: tuple[SweepRun, ...]
    chosen: float | None    # None when every rate diverged
    start_loss: float
    steps: int
    method: str
    seconds: float


def sweep_rates(spec: ModelSpec, backend: Backend, model: torch.nn.Module, opt: torch.optim.Optimizer,
                centre: float, micro: int, accumulation: int, steps: int, seed: int = 0,
                beta2: float | None = None, progress=lambda done, total: None) -> SweepResult:
    started = time.perf_counter()
    saved = SavedState(model, opt)
    first = float(opt.param_groups[0]["lr"]) or 1.0
    scales = [group["lr"] / first for group in opt.param_groups]  # groups keep their ratios
    originals = [(group["lr"], group.get("betas")) for group in opt.param_groups]
    torch.manual_seed(seed + 31337)
    held_out = [move_batch(spec.batch(micro), backend.device) for _ in range(max(2, 4 // accumulation))]
    start_loss = _held_out_loss(spec, model, held_out)
    runs: list[SweepRun] = []

    def run(rate: float) -> SweepRun:
        saved.restore()
        for group, scale in zip(opt.param_groups, scales):
            group["lr"] = rate * scale
            if beta2 is not None and "betas" in group:
                group["betas"] = (group["betas"][0], beta2)
        torch.manual_seed(seed + 4242)
        score = _train(spec, backend, model, opt, micro, accumulation, steps)
        runs.append(SweepRun(rate, score, not math.isfinite(score) or score > DIVERGED * start_loss))
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
    saved.restore()
    for group, (lr, betas) in zip(opt.param_groups, originals):
        group["lr"] = lr
        if betas is not None:
            group["betas"] = betas
    stable = [r for r in runs if not r.diverged]
    chosen = None
    if stable:
        first_unstable = next((r.learning_rate for r in runs if r.diverged and r.learning_rate > min(
            s.learning_rate for s in stable)), math.inf)
        candidates = [r for r in stable if r.learning_rate < first_unstable]
        lowest = min(r.loss for r in candidates)
        tied = [r for r in candidates if r.loss <= lowest + TIE * max(start_loss - lowest, 0.0)]
        chosen = min(tied, key=lambda r: abs(math.log(r.learning_rate / centre))).learning_rate
    method = (f"{backend.measured_on}: {len(runs)} rates ({' '.join(f'{r.learning_rate / centre:.2g}' for r in runs)} "
              "x the rule's), "
              f"each {steps} steps at batch {micro} x {accumulation} from the noise probe's last weights; "
              f"scored by the mean training loss of the second half")
    return SweepResult(tuple(runs), chosen, start_loss, steps, method, time.perf_counter() - started)


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
