"""The probes in order — memory, throughput, noise — and the advice drawn from them.

Each command runs the part it needs; `recommend` runs all of it. Nothing here prints: progress goes to
the `progress` callback and warnings into the report's notes, which the caller renders. advisor/api.py's
`run` drives it: the Python API, the command line and the --isolate child all come through there.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from advisor import distributed, watchdog
from advisor.advice import (ClusterPlan, Recommendation, StepTimeFit, batch_schedule, beta2_for, candidate_rows,
                            cluster_plan, fit_step_time, learning_rate_factor, optimizer_family, plan_at,
                            plateau_candidates, rule_recommendation, with_swept_rate)
from advisor.devices import Backend
from advisor.devices.recovery import try_step
from advisor.errors import BadInput, ProbeFailed
from advisor.hardware.profiles import profile_budget
from advisor.memory.fidelity import Corrected, hold_to_real_steps
from advisor.memory.profiled import guard_host_budget, trace_for_profile
from advisor.memory.trace import StepTracer
from advisor.probes.max_batch import MemoryResult, find_max_batch
from advisor.probes.noise import NoiseBudget, NoiseResult, TrainedRun, measure_noise, planned_steps, series_steps
from advisor.probes.real_steps import RealSteps
from advisor.probes.sweep import TYPICAL_RUNS, Candidate, SweepResult, sweep
from advisor.probes.throughput import ThroughputResult, geometric_batches, measure_throughput, not_rising
from advisor.results import ALL_SECTIONS, Report
from advisor.settings import Settings
from advisor.spec import DEFAULT_BASE_BATCH, ModelSpec, check_contract
from advisor.units import Budget

# What each probe's report shows: a probe another one needed (memory, for the noise batch) is not shown.
PROBE_SECTIONS = {"memory": ("memory",), "throughput": ("throughput",), "noise": ("noise",),
                  "recommendation": ALL_SECTIONS}
SWEEP_HOLD_STEPS = 20  # steps each swept rate must hold the loss from the noise probe's last weights


def no_progress(stage: str):
    return lambda done, total: None


class Advisor:
    """Runs the probes for one model on one device, each at most once, and keeps what they found. Nothing it
    was given is changed: the settings and every result are frozen, and `finish()` assembles the Report."""

    def __init__(self, spec: ModelSpec, backend: Backend, settings: Settings, progress=no_progress,
                 contract_first: bool = True):
        """`contract_first`: the real contract check runs now, before any probe (its real steps need the host to
        hold the model: checked first, on a fake-built twin). False where only a profiled device's memory is
        asked for: nothing is then built for real unless it is affordable (advisor/memory/profiled.py)."""
        self.spec, self.backend, self.settings, self.progress = spec, backend, settings, progress
        self.devices = distributed.world()
        # where only a profiled device's memory is asked for, nothing is measured here: this device's note
        # ("no CUDA device found: measuring on the CPU") would mislead
        self.notes: list[str] = [backend.note] if backend.note and contract_first else []
        self._started = time.perf_counter()
        self._smallest: int | None = None
        self._tracer = None  # the memory probe's tracer: traces the batches the report shows afterwards
        self._memory: MemoryResult | None = None
        self._throughput: ThroughputResult | None = None
        self._fit: StepTimeFit | None = None
        self._noise: NoiseResult | None = None
        self._trained: TrainedRun | None = None  # where the noise probe's run ended: the sweep starts there
        self._sweep: SweepResult | None = None
        self._recommendation: Recommendation | None = None
        self._candidates: tuple[dict, ...] = ()
        self._cluster: ClusterPlan | None = None
        self._base_batch: int | None = None
        self._base_lr: float | None = settings.base_lr
        self._model = self._opt = None  # one model and optimizer, built when first asked for their settings
        if contract_first:
            guard_host_budget(spec, backend.host_budget(settings.memory_bytes))  # the check builds it for real
            _ = self.smallest

    @property
    def smallest(self) -> int:
        """The smallest batch that trains: 2 where batch 1 cannot (BatchNorm). The real contract check finds it,
        when first needed; a trace for a profiled device finds it on the fake-built model instead."""
        if self._smallest is None:
            with watchdog.probe("contract check"):
                self._smallest = check_contract(self.spec)
        return self._smallest

    # ----------------------------------------------------------------------------------------- memory

    def memory(self) -> MemoryResult:
        if self._memory is None:
            with watchdog.probe("memory trace"):
                self._memory = self._measure_memory()
        return self._memory

    def _measure_memory(self) -> MemoryResult:
        self.progress("tracing peak memory")(0, 1)
        budget = self._budget()  # before this process's first CUDA work: the context is measured against it
        real = profiled = None
        if self.settings.profile is not None:  # another device: nothing the size of the model is built here
            profiled = trace_for_profile(self.spec, self.settings.profile, self.settings.seed, self.settings.shard,
                                         self.settings.attention, zero_stage=self.settings.zero_stage,
                                         shard_wrap=self.settings.shard_wrap)
            self._tracer, self._smallest = profiled, self._smallest or profiled.smallest
            self.notes.extend(profiled.notes)
        else:
            self._tracer = StepTracer(self.spec, fake=True, seed=self.settings.seed, smallest=self.smallest,
                                      batch_on_host=self.backend.holds_batch_on_host)
            if self.backend.confirms_with_real_steps:
                real = RealSteps(self.spec, self.backend, seed=self.settings.seed, smallest=self.smallest)
            else:
                self._tracer, real = self._held_to_real_steps(self._tracer)
        if distributed.active():  # the fake trace cannot run DDP: its buckets are added, labelled
            self._tracer = WithBuckets(self._tracer, distributed.bucket_bytes(self._optimizer_model()))
        memory = find_max_batch(self.spec, budget, self.settings.margin, tracer=self._tracer,
                                smallest=self.smallest, real=real)
        memory = replace(memory, method=self._memory_method(memory.method, profiled))
        if real is not None:  # its model and optimizer hold device memory the next probes need
            del real
            self.backend.release_memory()
        if memory.safe_max_batch < 1:
            room = int((budget.bytes - memory.context_bytes) * (1 - self.settings.margin))
            raise BadInput(f"{self.spec.path}: nothing fits once the {self.settings.margin:.0%} margin is kept: "
                           f"batch {self.smallest} needs {memory.peaks[self.smallest]} bytes of {room}")
        return memory

    def _memory_method(self, traced: str, profiled) -> str:
        """How the peaks were obtained: a profiled device's trace with its CUDA terms, DDP's buckets added."""
        method = traced
        if profiled is not None:
            terms = ", ".join(t.name for t in profiled.terms(self.smallest)[1:])
            method = profiled.method + (f"; plus {terms}" if terms else "")
        if isinstance(self._tracer, WithBuckets):
            method += (f"; per rank, plus DistributedDataParallel's gradient buckets ({self._tracer.extra} bytes, "
                       "the gradient bytes of the trained parameters: tracked, not traced)")
        return method

    def _held_to_real_steps(self, tracer: StepTracer):
        """The fake trace against real steps at the smallest batches (fidelity.py). Where the real step holds
        more, the trace is corrected by the gap and real steps confirm the boundary."""
        fidelity, _ = hold_to_real_steps(self.spec, self.settings.seed, self.smallest, build_fake=False, fake=tracer)
        if not fidelity.checked or fidelity.gap(self.smallest) == 0 and fidelity.gap(2 * self.smallest) == 0:
            return tracer, None
        self.notes.append(f"the fake trace held less than real CPU steps ({fidelity.describe()}): the trace is "
                          "corrected by the gap and the largest batch confirmed by real steps")
        return Corrected(tracer, fidelity), RealSteps(self.spec, self.backend, seed=self.settings.seed,
                                                      smallest=self.smallest)

    def _budget(self) -> Budget:
        """The device's free memory, or the profile's usable memory; --memory when smaller."""
        if self.settings.profile is None:
            budget = self.backend.memory_budget(self.settings.memory_bytes)
            if distributed.active():  # every rank must find the same batch: the smallest budget counts
                least = int(distributed.reduce_floats([budget.bytes], "min", "agreeing on the memory budget",
                                                      self.backend.device)[0])
                budget = Budget(least, budget.source + ", the least over ranks")
            return budget
        budget = profile_budget(self.settings.profile)
        limit = self.settings.memory_bytes
        return Budget(limit, "--memory") if limit is not None and limit < budget.bytes else budget

    # ------------------------------------------------------------------------------------- throughput

    def throughput(self) -> ThroughputResult:
        if self._throughput is None:
            with watchdog.probe("throughput probe"):
                self._throughput = self._time_steps()
        return self._throughput

    def _time_steps(self) -> ThroughputResult:
        sizes = self.settings.batch_sizes or geometric_batches(self.memory().safe_max_batch, self.smallest)
        if self.settings.batch_sizes and self.settings.memory_bytes is not None:
            sizes = self._sizes_within_budget()
        result = measure_throughput(self.spec, self.backend, list(sizes), max_step_seconds=self.settings.max_step_seconds,
                                    seed=self.settings.seed, progress=self.progress("timing steps"))
        self._fit = fit_step_time([(p.batch, p.step_seconds) for p in result.points])
        if result.stopped_early:
            self.notes.append(result.stopped_early + "; larger batches are estimated from the fit")
        for small, large in not_rising(result.points)[:1]:
            self.notes.append(f"the step at batch {large} timed faster than at batch {small}: the timings "
                              "are noisy (a busy machine?); the recommendation may move between runs")
        return result

    def _sizes_within_budget(self) -> list[int]:
        """--batch-sizes with --memory: less those above the largest batch that fits the budget (noted) or
        below the smallest that trains. (Without --memory, out of memory during the probe stops it.)"""
        limit = self.memory().safe_max_batch
        kept = [b for b in self.settings.batch_sizes if self.smallest <= b <= limit]
        dropped = sorted(set(self.settings.batch_sizes) - set(kept))
        if not kept:
            raise BadInput(f"--batch-sizes: every size is outside {self.smallest} to {limit}, the batches that train "
                           f"and fit the budget ({self.memory().budget.source}, {self.settings.margin:.0%} kept free)")
        if dropped:
            self.notes.append(f"--batch-sizes {', '.join(map(str, dropped))}: not timed, outside "
                              f"{self.smallest} to {limit} (the batches that train and fit the budget)")
        return kept

    # ------------------------------------------------------------------------------------------ noise

    def noise(self) -> NoiseResult:
        if self._noise is None:
            with watchdog.probe("noise probe"):
                self._noise = self._measure_noise()
        return self._noise

    def _measure_noise(self) -> NoiseResult:
        """Measure at 8x the base batch; where noise swamps the gradient (|G|² unresolved), measure
        again at 4x the batch, up to what fits, since a bigger batch averages the noise away. A batch
        that runs out of memory is halved (each try starts from a fresh model)."""
        base, largest = self.base_batch(), self.memory().safe_max_batch
        batch = self.settings.noise_batch or min(8 * base, largest)
        if batch < 2 * self.smallest:
            raise ProbeFailed(f"the noise probe needs a batch of at least {2 * self.smallest}; only {batch} fits")
        while True:
            kept: list = []
            result = self._noise_at(batch, min(base, batch), kept)
            if result is None:  # out of memory: half the batch, and never larger again
                if batch // 2 < 2 * self.smallest:
                    raise ProbeFailed(f"the noise probe runs out of memory on {self.backend.device} "
                                      f"even at batch {batch}")
                self.notes.append(f"the noise probe ran out of memory at batch {batch} on "
                                  f"{self.backend.device}: measuring at batch {batch // 2}")
                largest = batch = batch // 2
                continue
            if result.scale.resolved or self.settings.noise_batch or batch >= largest:
                break
            self.notes.append(f"gradient noise unresolved at batch {batch}: measuring again at a larger batch")
            batch = min(4 * batch, largest)
        self._note_noise(result, batch)
        self._trained = kept[0] if kept else None
        return result

    def _noise_at(self, batch: int, train_batch: int, kept: list) -> NoiseResult | None:
        """One noise series at `batch` (None: out of memory); `kept` receives the run's last model and optimizer."""
        micro_batches = min(8, batch // self.smallest)
        return try_step(lambda: measure_noise(
            self.spec, self.backend, batch, micro_batches=micro_batches,
            snapshots=self.settings.noise_snapshots, warmup_steps=self.settings.noise_warmup_steps,
            warmup_batch=train_batch, seed=self.settings.seed,
            budget=self._noise_budget(train_batch, batch // micro_batches, micro_batches),
            target_loss=self.settings.target_loss,
            progress=self.progress(f"measuring gradient noise at batch {batch}"), keep=kept),
            self.backend, f"the noise probe at batch {batch}")

    def _note_noise(self, result: NoiseResult, batch: int) -> None:
        if result.scale.no_signal:
            raise BadInput(f"{self.spec.path}: every gradient of the noise probe was zero: the loss does not "
                           "depend on the trained parameters, so there is no signal to measure")
        if not result.scale.resolved:
            self.notes.append(f"the noise scale is not resolved at batch {batch}: the gradient is dominated "
                              "by noise (B_simple is large or unbounded); --batch-size larger may resolve it")
        if result.trend is not None and result.trend > 0.25:
            self.notes.append(f"the noise scale grows along training (B_simple ~ step^{result.trend:.2f}): "
                              f"the advice uses its latest value (step {result.late_step}); a longer "
                              "--noise-budget follows it further")

    def _noise_budget(self, train_batch: int, micro: int, micro_batches: int) -> NoiseBudget:
        """A budget in seconds becomes one in steps, planned from the throughput probe's step times when they
        are known: the series' length then moves with the machine's load only as the minimum step times do
        (little), and so does the noise scale the advice uses."""
        budget = self.settings.noise_budget
        if budget.seconds is None or self._fit is None:
            return budget
        fit, snapshots = self._fit, self.settings.noise_snapshots
        step_seconds = fit.seconds(train_batch) + self._data_seconds(train_batch)
        snapshot = micro_batches * fit.seconds(micro) + self._data_seconds(micro * micro_batches)
        last = planned_steps(series_steps(self.settings.noise_warmup_steps), budget.seconds, step_seconds,
                             snapshots * snapshot)
        return NoiseBudget(seconds=None, steps=last, planned_from=budget.seconds)

    # --------------------------------------------------------------------------------- recommendation

    def recommendation(self) -> Recommendation:
        if self._recommendation is None:
            self._recommendation = self._advise()
        return self._recommendation

    def _advise(self) -> Recommendation:
        throughput, noise = self.throughput(), self.noise()
        limit = self._limit()
        self._fit = self._fit_near_candidates(noise.scale.b_simple, limit)
        rec = self._rule_recommendation()
        if self.settings.lr_sweep and not distributed.active() and self._trained is not None and rec.learning_rate > 0:
            with watchdog.probe("learning-rate sweep"):
                rec = self._sweep_rates_and_batches(rec)
        series = [(p.examples, p.scale.b_simple) for p in noise.series if p.scale.resolved]
        schedule = batch_schedule(self._fit, self._optimizer_seconds(), series, rec, limit, self.devices,
                                  self.smallest) if len(series) > 1 else ()
        rec = replace(rec, schedule=schedule)
        self._trace_peaks([p.batch for p in throughput.points] + [rec.plan.micro_batch, self.base_batch()]
                          + [e.plan.micro_batch for e in schedule])
        memory = self.memory()
        self._candidates = tuple(candidate_rows(
            self._fit, self._optimizer_seconds(), noise.scale.b_simple, rec,
            {p.batch: p.step_seconds for p in throughput.points}, list(self.settings.batch_sizes or ()),
            memory.safe_max_batch, memory.peak_at, set(memory.peaks)))
        if self.settings.plan_gpus:
            self._cluster = self._plan_cluster()
        return rec

    def _optimizer_seconds(self) -> float:
        return min(p.optimizer_seconds for p in self.throughput().points)

    def _limit(self) -> int:
        """The largest micro-batch the advice may use: what fits, and below a batch whose step ran out of memory
        (the device has less room now than the memory probe saw)."""
        limit, oom = self.memory().safe_max_batch, self.throughput().out_of_memory_at
        return limit if oom is None else min(limit, oom - 1)

    def _rule_recommendation(self, measured: tuple[int, str] | None = None) -> Recommendation:
        noise = self.noise()
        return rule_recommendation(self._fit, self._optimizer_seconds(), noise.scale.b_simple, self.base_batch(),
                                   self.base_lr(), self.family(), self._limit(), devices=self.devices,
                                   min_micro=self.smallest, base_beta2=self._base_beta2(),
                                   warmup_examples=noise.series[-1].examples if noise.series else None,
                                   measured=measured, timed=self._timed())

    def _timed(self) -> list[int]:
        """The global batches whose step the throughput probe timed (one micro-batch per device)."""
        return [p.batch * self.devices for p in self.throughput().points]

    def _fit_near_candidates(self, phi: float, limit: int) -> StepTimeFit:
        """The step-time line refitted near the batches the advice weighs (around the goodput optimum),
        twice, so that curvature far from them does not move the recommendation."""
        points = [(p.batch, p.step_seconds) for p in self.throughput().points]
        fit = self._fit
        for _ in range(2):
            if not (math.isfinite(phi) and fit.alpha > 0):
                break
            fit = fit_step_time(points, around=min(max(math.sqrt(phi * fit.alpha / fit.beta), self.smallest), limit))
        return fit

    def _sweep_rates_and_batches(self, rec: Recommendation) -> Recommendation:
        """The rule's batch and rate checked by short runs (see probes/sweep.py): rates at the plateau rule's
        batch, then at the plateau's ends for the same counted time; the batch that trains furthest wins."""
        plan = rec.plan
        per_step = plan.accumulation_steps * (self._fit.seconds(plan.micro_batch) + self._data_seconds(plan.micro_batch))
        quarter = math.ceil(0.25 * self.noise().series[-1].examples / plan.batch_size)  # of the probed run
        affordable = int(self.settings.sweep_seconds / (TYPICAL_RUNS * per_step)) - SWEEP_HOLD_STEPS
        steps = max(20, min(quarter, affordable))
        batches = plateau_candidates(rec.plateau, plan.batch_size, timed=self._timed())
        candidates = [self._candidate(batch, rec, steps) for batch in batches]
        trained, self._trained = self._trained, None  # its model and optimizer are not needed again
        result = try_step(lambda: sweep(self.spec, self.backend, trained.model, trained.opt, candidates,
                                        seed=self.settings.seed, hold_steps=SWEEP_HOLD_STEPS,
                                        progress=self.progress("sweeping the learning rate and batch")),
                          self.backend, "the learning-rate sweep")
        if result is None:
            self.notes.append("the learning-rate sweep ran out of memory: the batch and rate are the rule's")
            return rec
        self._sweep = result
        if result.chosen is None:
            self.notes.append("every rate of the learning-rate sweep diverged: the rate is the rule's, "
                              "and may be too high")
            return rec
        return self._with_sweep(rec, result)

    def _with_sweep(self, rec: Recommendation, result: SweepResult) -> Recommendation:
        """The recommendation at the batch and rate the sweep chose, its reasons saying why, β2 only if it won."""
        rule_batch = rec.plan.batch_size
        if result.chosen_batch != rule_batch:
            rec = self._rule_recommendation(measured=(result.chosen_batch, _batch_verdict(result)))
        trial = next(t for t in result.trials if t.candidate.batch == result.chosen_batch)
        rec = with_swept_rate(rec, result.chosen, f"{len(result.runs)} short runs of {result.steps} steps, "
                                                  f"lowest loss {trial.loss:.4g}")
        if len(result.trials) > 1 and result.chosen_batch == rule_batch:
            rec = replace(rec, reasons=rec.reasons + [_batch_verdict(result)])
        if rec.beta2 is not None and not result.beta2_kept:
            rec = replace(rec, beta2=None, reasons=[r for r in rec.reasons if not r.startswith("beta2")] + [
                f"beta2 stays {rec.base_beta2:g}: the half-life rule's {rec.beta2:.4g} scored {result.beta2_loss:.4g} "
                f"from initialisation and {result.beta2_late_loss:.4g} from the noise probe's last weights at the "
                f"chosen rate, not better both ways than the optimizer's own ({trial.loss:.4g} and {trial.late_loss:.4g})"])
        return rec

    def _candidate(self, batch: int, rec: Recommendation, steps: int) -> Candidate:
        """A batch for the sweep: its plan, the rule's rate for it, and steps for the same counted time as
        `steps` at the recommended batch (by the step-time fit)."""
        plan = plan_at(self._fit, self._optimizer_seconds(), batch, self._limit(), self.devices, self.smallest)
        factor, _ = learning_rate_factor(self.noise().scale.b_simple, rec.base_batch, plan.batch_size,
                                         rec.optimizer_family)
        beta2 = beta2_for(rec.base_beta2, rec.base_batch, plan.batch_size) if rec.optimizer_family == "adam" and \
            rec.base_beta2 else None
        return Candidate(plan.micro_batch, plan.accumulation_steps, rec.base_lr * factor,
                         max(8, round(steps * rec.plan.step_seconds / plan.step_seconds)), beta2)

    def _data_seconds(self, batch: int) -> float:
        """The model file's batch(batch) alone, from a line fitted to the throughput probe's minimum times of
        it (the step's own time is the step-time fit)."""
        points = self.throughput().points
        return fit_step_time([(p.batch, max(p.batch_seconds, 1e-9)) for p in points]).seconds(batch)

    def _plan_cluster(self) -> ClusterPlan:
        """--plan-gpus N: the step on N GPUs predicted from the measured fit and the profile's interconnect."""
        profile = self.settings.profile
        bandwidth, latency = profile.get("interconnect_bandwidth_gb_per_s"), profile.get("interconnect_latency_us")
        if bandwidth is None:
            raise BadInput(f"--plan-gpus: the profile {profile['name']!r} gives no interconnect_bandwidth_gb_per_s")
        return cluster_plan(
            self._fit, self._optimizer_seconds(), self.noise().scale.b_simple, self.base_batch(), self.base_lr(),
            self.family(), self.memory().safe_max_batch, self.settings.plan_gpus,
            distributed.bucket_bytes(self._optimizer_model()), bandwidth, latency or 0.0, profile["name"],
            self.backend.measured_on, measured_devices=self.devices, min_micro=self.smallest)

    def _trace_peaks(self, sizes: list[int]) -> None:
        """Trace the peak of every batch the report shows (cheap under FakeTensorMode), so none is
        an extrapolation. Sizes below the smallest that trains (a base batch of 1 with BatchNorm) are not
        steps the model can take, so they are not traced."""
        memory = self.memory()
        extra = {size: self._tracer.peak(size) for size in sorted(set(sizes))
                 if size not in memory.peaks and self.smallest <= size <= memory.max_batch}
        if extra:
            self._memory = replace(memory, peaks={**memory.peaks, **extra})

    # -------------------------------------------------------------------------- the user's settings

    def base_batch(self) -> int:
        if self._base_batch is None:
            chosen = self.settings.base_batch or self.spec.base_batch_size
            if chosen is None:
                self.notes.append(f"no --base-batch and no BASE_BATCH_SIZE in the model file: "
                                  f"assuming the learning rate was tuned at batch {DEFAULT_BASE_BATCH}")
                chosen = DEFAULT_BASE_BATCH
            self._base_batch = chosen
        return self._base_batch

    def base_lr(self) -> float:
        if self._base_lr is None:
            self._base_lr = float(self._optimizer().param_groups[0]["lr"])
        return self._base_lr

    def family(self) -> str:
        return optimizer_family([cls.__name__ for cls in type(self._optimizer()).__mro__])

    def _base_beta2(self) -> float | None:
        betas = self._optimizer().param_groups[0].get("betas")
        return float(betas[1]) if isinstance(betas, (tuple, list)) and len(betas) == 2 else None

    def _optimizer(self):
        if self._opt is None:
            self._opt = self.spec.optimizer(self._optimizer_model())
        return self._opt

    def _optimizer_model(self):
        if self._model is None:
            self._model = self.spec.model()
        return self._model

    def finish(self, sections: tuple[str, ...] = ALL_SECTIONS) -> Report:
        notes = self.notes + [n for n in self.spec.notes if n not in self.notes]
        return Report(model=str(self.spec.path), device=str(self.backend.device), sections=sections,
                      memory=self._memory, throughput=self._throughput, fit=self._fit, noise=self._noise,
                      sweep=self._sweep, recommendation=self._recommendation, candidates=self._candidates,
                      cluster=self._cluster, devices=self.devices, notes=tuple(notes),
                      seconds=time.perf_counter() - self._started)


def _batch_verdict(result: SweepResult) -> str:
    """Why the sweep's batch: each candidate's scores for the same counted time, both ways."""
    scores = ", ".join(f"{t.candidate.batch}: {t.loss:.4g} / {t.late_loss:.4g}" for t in result.trials)
    first = result.trials[0].candidate.batch
    verdict = (f"batch {result.chosen_batch} trained further than the plateau rule's {first} by more than 1% both "
               "ways" if result.chosen_batch != first else
               f"no other batch trained further than the plateau rule's {first} by more than 1% both ways")
    return (f"{verdict} in short runs of the same counted time, each at its best rate (mean loss of the second "
            f"half from initialisation, from {result.start_loss:.4g} / from the noise probe's last weights, from "
            f"{result.hold_loss:.4g}: {scores})")


class WithBuckets:
    """A tracer whose every peak carries DDP's gradient buckets (`extra` bytes) on top of the traced step."""

    def __init__(self, tracer: StepTracer, extra: int):
        self.tracer, self.extra, self.fake = tracer, extra, tracer.fake

    def peak(self, batch: int) -> int:
        return self.tracer.peak(batch) + self.extra
