"""Follow the advice in a training loop: the batch and the learning rate to use at each step.

    from advisor.schedule import Advice
    advice = Advice.from_json("advice.json")      # the output of `bsadvisor recommend --json`
    for step in range(steps):
        at = advice.at(step)                      # at.batch_size, at.micro_batch, at.accumulation_steps, at.lr
        for group in opt.param_groups:
            group["lr"] = at.lr
        ...

Without a schedule in the document, every step gets the single recommendation; with one, the batch and
rate change at each entry's `from_step`. The linear warm-up (from the base rate) is applied on top.
Pure: reads a document, never the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Step:
    batch_size: int
    micro_batch: int
    accumulation_steps: int
    lr: float


@dataclass(frozen=True)
class Advice:
    phases: tuple[tuple[int, Step], ...]  # (from_step, what to use from there), by from_step
    warmup_steps: int
    base_lr: float
    beta2: float | None = None

    @classmethod
    def from_json(cls, source: str | Path | dict) -> "Advice":
        """From `recommend --json`'s document (a dict, or the path of a file holding it)."""
        doc = source if isinstance(source, dict) else json.loads(Path(source).read_text())
        r = doc["recommendation"]
        entries = r.get("schedule") or [{"from_step": 0, **r}]
        phases = tuple((e["from_step"], Step(e["batch_size"], e["micro_batch"], e["accumulation_steps"],
                                             e["learning_rate"])) for e in entries)
        return cls(tuple(sorted(phases, key=lambda p: p[0])), r["warmup_steps"], r["base_lr"], r.get("beta2"))

    def at(self, step: int) -> Step:
        """What to train step `step` (0-based) with."""
        current = next((s for start, s in reversed(self.phases) if start <= step), self.phases[0][1])
        if step < self.warmup_steps:
            lr = self.base_lr + (current.lr - self.base_lr) * (step + 1) / self.warmup_steps
            return Step(current.batch_size, current.micro_batch, current.accumulation_steps, lr)
        return current
