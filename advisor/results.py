"""What a run found, typed, and the one JSON document it becomes (`Report.to_dict()`, what `--json` prints).

Every figure carries how it was obtained: measured (on CPU or CUDA), tracked (exact tensor bytes of a
traced step), estimated (from a fit), or taken from a profile. Nothing here measures or computes advice:
the pipeline has done that (the candidates table's rows included); this is the schema.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from advisor import __version__
from advisor.advice import ClusterPlan, Recommendation, StepTimeFit
from advisor.probes.max_batch import MemoryResult
from advisor.probes.noise import NoiseResult
from advisor.probes.sweep import SweepResult
from advisor.probes.throughput import ThroughputResult

SCHEMA_VERSION = 1
ALL_SECTIONS = ("memory", "throughput", "noise", "recommendation")


@dataclass(frozen=True)
class Report:
    """One run's results. `sections`: those its command asked for (`to_dict` writes only these; a probe
    another one needed, memory for the noise batch, is kept here all the same). The advice itself is
    `recommendation` (with `batch_size`, `learning_rate`, ... as shortcuts)."""

    model: str                 # the model file's path, or the name of the objects given
    device: str                # e.g. "cpu", "cuda:0"
    sections: tuple[str, ...] = ALL_SECTIONS
    memory: MemoryResult | None = None
    throughput: ThroughputResult | None = None
    fit: StepTimeFit | None = None
    noise: NoiseResult | None = None
    sweep: SweepResult | None = None
    recommendation: Recommendation | None = None
    candidates: tuple[dict, ...] = ()  # the candidates table's rows (with a recommendation)
    cluster: ClusterPlan | None = None
    devices: int = 1  # ranks of the data-parallel job the probes ran in
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def batch_size(self) -> int:
        """The advised batch (micro-batch × accumulation steps × devices)."""
        return self._advice().plan.batch_size

    @property
    def micro_batch(self) -> int:
        return self._advice().plan.micro_batch

    @property
    def accumulation_steps(self) -> int:
        return self._advice().plan.accumulation_steps

    @property
    def learning_rate(self) -> float:
        return self._advice().learning_rate

    @property
    def warmup_steps(self) -> int:
        return self._advice().warmup_steps

    def _advice(self) -> Recommendation:
        if self.recommendation is None:
            raise AttributeError("this report has no recommendation: only recommend() gives one")
        return self.recommendation

    def to_dict(self) -> dict:
        """The JSON document, exactly as `bsadvisor <command> --json` prints it (unbounded figures as None)."""
        device = self.device.split(":")[0]
        doc = {"schema_version": SCHEMA_VERSION, "bsadvisor_version": __version__, "model": self.model,
               "device": {"type": device, "name": self.device}}
        if self.memory and "memory" in self.sections:
            doc["memory"] = _memory(self.memory)
        if self.throughput and "throughput" in self.sections:
            doc["throughput"] = _throughput(self)
        if self.noise and "noise" in self.sections:
            doc["noise"] = _noise(self.noise)
        if self.recommendation and "recommendation" in self.sections:
            doc["recommendation"] = _recommendation(self.recommendation, self.sweep)
            doc["candidates"] = list(self.candidates)
        if self.cluster and "recommendation" in self.sections:
            doc["plan"] = _plan(self.cluster)
        doc["notes"] = list(self.notes)
        doc["seconds"] = self.seconds
        return _finite(doc)


def _memory(m: MemoryResult) -> dict:
    return {
        "max_batch": m.max_batch, "safe_max_batch": m.safe_max_batch,
        "budget_bytes": m.budget.bytes, "budget_source": m.budget.source, "margin": m.margin,
        "bytes_per_sample": m.bytes_per_sample, "fixed_bytes": m.fixed_bytes,
        "at_search_limit": m.at_search_limit, "method": m.method, "seconds": m.seconds,
        "traced": [{"batch": b, "peak_bytes": p} for b, p in sorted(m.peaks.items())],
        "predicted_max_batch": m.predicted_max_batch, "real_steps": m.real_steps,
        "context_bytes": m.context_bytes,
        "measured": [{"batch": b, "out_of_memory": p is None, "reserved_bytes": None if p is None else p[0],
                      "allocated_bytes": None if p is None else p[1]} for b, p in sorted(m.measured.items())],
    }


def _throughput(report: Report) -> dict:
    t = report.throughput
    return {
        "points": [{"batch": p.batch, "step_seconds": p.step_seconds, "samples_per_second": p.samples_per_second,
                    "optimizer_seconds": p.optimizer_seconds, "spread": p.spread} for p in t.points],
        "fit": {"alpha_seconds": report.fit.alpha, "beta_seconds_per_sample": report.fit.beta,
                "method": "estimated: weighted least squares T(B) = alpha + beta*B" + (
                    ", weighted near the candidate batches" if report.recommendation else "")},
        "stopped_early": t.stopped_early, "out_of_memory_at": t.out_of_memory_at, "method": t.method,
        "seconds": t.seconds, "devices": report.devices,
    }


def _noise(n: NoiseResult) -> dict:
    return {
        "b_simple": n.scale.b_simple, "ci95": list(n.scale.ci95), "grad_sq_norm": n.scale.grad_sq_norm,
        "trace_sigma": n.scale.trace_sigma, "batch_size": n.batch_size, "micro_batch": n.micro_batch,
        "snapshots": n.scale.snapshots, "warmup_steps": n.warmup_steps, "preconditioned": n.preconditioned,
        "geometry": n.geometry, "resolved": n.scale.resolved, "method": n.method, "seconds": n.seconds,
        "train_batch": n.train_batch, "late_step": n.late_step, "trend": n.trend, "stopped": n.stopped,
        "series": [{"step": p.step, "examples": p.examples, "loss": p.loss, "b_simple": p.scale.b_simple,
                    "ci95": list(p.scale.ci95), "resolved": p.scale.resolved, "seconds": p.seconds}
                   for p in n.series],
    }


def _recommendation(r: Recommendation, sweep: SweepResult | None) -> dict:
    source = batch_source(sweep)
    return {
        "batch_size": r.plan.batch_size, "micro_batch": r.plan.micro_batch,
        "accumulation_steps": r.plan.accumulation_steps, "learning_rate": r.learning_rate,
        "lr_rule": r.lr_rule, "lr_factor": r.lr_factor, "warmup_steps": r.warmup_steps,
        "optimizer_family": r.optimizer_family, "base_batch": r.base_batch, "base_lr": r.base_lr,
        "statistical_efficiency": r.efficiency, "goodput_vs_base": r.goodput_vs_base,
        "step_seconds": r.plan.step_seconds, "reasons": r.reasons,
        "devices": r.plan.devices, "global_batch": r.plan.batch_size, "per_device_micro_batch": r.plan.micro_batch,
        "method": BATCH_METHODS[source], "batch_source": source,
        "plateau": [r.plateau.low, r.plateau.high] if r.plateau else None,
        "plateau_best": r.plateau.best if r.plateau else None,
        "plateau_tolerance": r.plateau.tolerance if r.plateau else None,
        "rule_learning_rate": r.rule_learning_rate, "lr_source": r.lr_source,
        "beta2": r.beta2, "base_beta2": r.base_beta2,
        "schedule": [{"from_step": e.from_step, "from_examples": e.from_examples, "batch_size": e.plan.batch_size,
                      "micro_batch": e.plan.micro_batch, "accumulation_steps": e.plan.accumulation_steps,
                      "learning_rate": e.learning_rate, "b_simple": e.noise_scale} for e in r.schedule],
        "lr_sweep": None if sweep is None else _sweep(sweep),
    }


def _sweep(s: SweepResult) -> dict:
    return {
        "runs": _runs(s.runs), "chosen": s.chosen, "start_loss": s.start_loss, "steps": s.steps,
        "hold_loss": s.hold_loss, "hold_steps": s.hold_steps, "beta2_loss": s.beta2_loss,
        "beta2_late_loss": s.beta2_late_loss, "beta2_kept": s.beta2_kept, "method": s.method, "seconds": s.seconds,
        "chosen_batch": s.chosen_batch,
        "batches": [{"batch": t.candidate.batch, "micro_batch": t.candidate.micro,
                     "accumulation_steps": t.candidate.accumulation, "steps": t.candidate.steps,
                     "learning_rate": t.chosen, "loss": t.loss, "late_loss": t.late_loss, "runs": _runs(t.runs)}
                    for t in s.trials]}


def _runs(runs) -> list[dict]:
    return [{"learning_rate": x.learning_rate, "loss": x.loss, "held_loss": x.held, "diverged": x.diverged}
            for x in runs]


def _plan(c: ClusterPlan) -> dict:
    r = c.recommendation
    return {
        "gpus": c.gpus, "profile": c.profile, "gradient_bytes": c.gradient_bytes,
        "allreduce_seconds": c.allreduce_seconds, "per_device_micro_batch": r.plan.micro_batch,
        "accumulation_steps": r.plan.accumulation_steps, "global_batch": r.plan.batch_size,
        "step_seconds": r.plan.step_seconds, "samples_per_second": r.plan.batch_size / r.plan.step_seconds,
        "learning_rate": r.learning_rate, "lr_factor": r.lr_factor, "warmup_steps": r.warmup_steps,
        "goodput_vs_base": r.goodput_vs_base, "method": c.method,
    }


BATCH_METHODS = {
    "sweep": ("measured: of the goodput plateau's batches, the one whose short runs trained furthest in the "
              "same counted time, from initialisation and from the noise probe's last weights"),
    "plateau rule": "estimated: goodput from the step-time fit and the measured noise scale",
}


def batch_source(sweep: SweepResult | None) -> str:
    """'sweep' when short runs chose between several of the plateau's batches, else 'plateau rule'."""
    return "sweep" if sweep is not None and len(sweep.trials) > 1 and sweep.chosen is not None else "plateau rule"


def _finite(value):
    """JSON has no infinity: an unbounded figure (an unresolved noise scale) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
