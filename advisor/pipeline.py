"""The probes in order — memory, throughput, noise — and the advice drawn from them.

Each command runs the part it needs; `recommend` runs all of it. Nothing here prints: progress goes to
the `progress` callback and warnings into the report's notes, which the CLI renders.
"""

import contextlib
import math
import os
import time
from dataclasses import dataclass, field, replace

import torch

from advisor import distributed
from advisor.advice import (ClusterPlan, Recommendation, StepTimeFit, batch_schedule, beta2_for, cluster_plan,
                            fit_step_time, learning_rate_factor, optimizer_family, plan_at, plateau_candidates, recommend,
                            with_swept_rate)
from advisor.capacity import profile_budget
from advisor.device import (Backend, Budget, host_available_bytes, resolve_device, resolve_rank_device,
                            threads_beside_load)
from advisor.errors import BadInput, ProbeFailed
from advisor.memory.cuda import RealSteps
from advisor.memory.fidelity import Corrected, hold_to_real_steps
from advisor.memory.max_batch import MemoryResult, find_max_batch
from advisor.memory.profiled import guard_host_budget, trace_for_profile
from advisor.memory.oom import free_device_memory, try_step
from advisor.memory.trace import StepTracer, release_trace_caches
from advisor.probes.sweep import TYPICAL_RUNS, Candidate, SweepResult, sweep
from advisor.probes.noise import NoiseBudget, NoiseResult, measure_noise, series_steps
from advisor.probes.throughput import ThroughputResult, geometric_batches, measure_throughput, not_rising
from advisor import watchdog
from advisor.spec import DEFAULT_BASE_BATCH, ModelSpec, check_contract, load_spec
from advisor.watchdog import DEFAULT_COLLECTIVE_TIMEOUT, DEFAULT_STEP_TIMEOUT


@dataclass
class Settings:
    memory_bytes: int | None = None
    margin: float = 0.1
    base_batch: int | None = None
    base_lr: float | None = None
    noise_warmup_steps: int = 10
    noise_batch: int | None = None
    noise_snapshots: int = 16  # per point of the noise series
    noise_budget: NoiseBudget = field(default_factory=NoiseBudget)
    lr_sweep: bool = True
    sweep_seconds: float = 40.0
    target_loss: float | None = None  # the loss the user's run trains to: the noise series stops there
    batch_sizes: list[int] | None = None
    max_step_seconds: float = 1.0
    seed: int = 0
    step_timeout: float = DEFAULT_STEP_TIMEOUT
    profile: dict | None = None  # a hardware profile whose memory is the budget
    collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT
    plan_gpus: int | None = None  # predict the step on this many GPUs from the profile's interconnect
    shard: int | None = None  # --shard N: the peak on one GPU of N under full sharding (with a profile)
    attention: str | None = None  # --attention: the kernel the profiled GPU runs (else the profile's, else auto)


@dataclass
class Report:
    spec: ModelSpec
    backend: Backend
    settings: Settings
    memory: MemoryResult | None = None
    throughput: ThroughputResult | None = None
    fit: StepTimeFit | None = None
    noise: NoiseResult | None = None
    sweep: SweepResult | None = None
    recommendation: Recommendation | None = None
    cluster: ClusterPlan | None = None
    devices: int = 1  # ranks of the data-parallel job the probes ran in
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def no_progress(stage: str):
    return lambda done, total: None


class Advisor:
    """Runs the probes for one model file on one device, each at most once."""

    def __init__(self, spec: ModelSpec, backend: Backend, settings: Settings, progress=no_progress,
                 contract_first: bool = True):
        """`contract_first`: the real contract check runs now, before any probe (its real steps need the host to
        hold the model: checked first, on a fake-built twin). False where only a profiled device's memory is
        asked for: nothing is then built for real unless it is affordable (advisor/memory/profiled.py)."""
        self.report = Report(spec, backend, settings)
        self.spec, self.backend, self.settings, self.progress = spec, backend, settings, progress
        self.devices = self.report.devices = distributed.world()
        self._started = time.perf_counter()
        self._trained = None  # the noise probe's trained model and optimizer, for the learning-rate sweep
        if backend.note:
            self.report.notes.append(backend.note)
        self._smallest: int | None = None
        if contract_first:
            host = backend.memory_budget(settings.memory_bytes) if not backend.is_cuda else \
                Budget(host_available_bytes(), "host available memory (/proc/meminfo MemAvailable)")
            guard_host_budget(spec, host)  # the contract check builds the model for real, on the host
            _ = self.smallest

    @property
    def smallest(self) -> int:
        """The smallest batch that trains: 2 where batch 1 cannot (BatchNorm). The real contract check finds it,
        when first needed; a trace for a profiled device finds it on the fake-built model instead."""
        if self._smallest is None:
            with watchdog.probe("contract check"):
                self._smallest = check_contract(self.spec)
        return self._smallest

    def memory(self) -> MemoryResult:
        with watchdog.probe("memory trace"):
            return self._memory()

    def _memory(self) -> MemoryResult:
        if self.report.memory is None:
            self.progress("tracing peak memory")(0, 1)
            budget = self._budget()  # before this process's first CUDA work: the context is measured against it
            real = profiled = None
            if self.settings.profile is not None:  # another device: nothing the size of the model is built here
                self._tracer = profiled = trace_for_profile(self.spec, self.settings.profile, self.settings.seed,
                                                 self.settings.shard, self.settings.attention)
                self._smallest = self._smallest or self._tracer.smallest
                self.report.notes.extend(self._tracer.notes)
            else:
                self._tracer = StepTracer(self.spec, fake=True, seed=self.settings.seed, smallest=self.smallest,
                                          batch_on_host=not self.backend.is_cuda)
                if not self.backend.is_cuda:
                    self._tracer, real = self._held_to_real_steps(self._tracer)
            if distributed.active():  # the fake trace cannot run DDP: its buckets are added, labelled
                self._tracer = WithBuckets(self._tracer, distributed.bucket_bytes(self._optimizer_model()))
            if self.backend.is_cuda and self.settings.profile is None:  # a profile's budget is another device's
                real = RealSteps(self.spec, self.backend, seed=self.settings.seed, smallest=self.smallest)
            self.report.memory = find_max_batch(self.spec, budget, self.settings.margin, tracer=self._tracer,
                                                smallest=self.smallest, real=real)
            if profiled is not None:  # how the profiled device's step was traced, and its CUDA terms
                terms = ", ".join(t.name for t in profiled.terms(self.smallest)[1:])
                self.report.memory = replace(self.report.memory, method=profiled.method + (
                    f"; plus {terms}" if terms else ""))
            if isinstance(self._tracer, WithBuckets):
                self.report.memory = replace(self.report.memory, method=self.report.memory.method + (
                    f"; per rank, plus DistributedDataParallel's gradient buckets ({self._tracer.extra} bytes, "
                    "the gradient bytes of the trained parameters: tracked, not traced)"))
            if real is not None:  # its model and optimizer hold device memory the next probes need
                del real
                free_device_memory(self.backend.device)
            memory = self.report.memory
            if memory.safe_max_batch < 1:
                room = int((budget.bytes - memory.context_bytes) * (1 - self.settings.margin))
                raise BadInput(f"{self.spec.path}: nothing fits once the {self.settings.margin:.0%} margin is kept: "
                               f"batch {self.smallest} needs {memory.peaks[self.smallest]} bytes of {room}")
        return self.report.memory

    def _held_to_real_steps(self, tracer: StepTracer):
        """On the CPU, the fake trace against real steps at the smallest batches (fidelity.py). Where the real
        step holds more, the trace is corrected by the gap and real steps confirm the boundary."""
        fidelity, _ = hold_to_real_steps(self.spec, self.settings.seed, self.smallest, build_fake=False, fake=tracer)
        if not fidelity.checked or fidelity.gap(self.smallest) == 0 and fidelity.gap(2 * self.smallest) == 0:
            return tracer, None
        self.report.notes.append(f"the fake trace held less than real CPU steps ({fidelity.describe()}): the trace is "
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

    def throughput(self) -> ThroughputResult:
        with watchdog.probe("throughput probe"):
            return self._throughput()

    def _throughput(self) -> ThroughputResult:
        if self.report.throughput is None:
            sizes = self.settings.batch_sizes or geometric_batches(self.memory().safe_max_batch, self.smallest)
            if self.settings.batch_sizes and self.settings.memory_bytes is not None:
                sizes = self._sizes_within_budget()
            result = measure_throughput(self.spec, self.backend, sizes, max_step_seconds=self.settings.max_step_seconds,
                                        seed=self.settings.seed, progress=self.progress("timing steps"))
            self.report.throughput = result
            self.report.fit = fit_step_time([(p.batch, p.step_seconds) for p in result.points])
            if result.stopped_early:
                self.report.notes.append(result.stopped_early + "; larger batches are estimated from the fit")
            for small, large in not_rising(result.points)[:1]:
                self.report.notes.append(f"the step at batch {large} timed faster than at batch {small}: the timings "
                                         "are noisy (a busy machine?); the recommendation may move between runs")
        return self.report.throughput

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
            self.report.notes.append(f"--batch-sizes {', '.join(map(str, dropped))}: not timed, outside "
                                     f"{self.smallest} to {limit} (the batches that train and fit the budget)")
        return kept

    def noise(self) -> NoiseResult:
        with watchdog.probe("noise probe"):
            return self._noise()

    def _noise(self) -> NoiseResult:
        """Measure at 8x the base batch; where noise swamps the gradient (|G|² unresolved), measure
        again at 4x the batch, up to what fits, since a bigger batch averages the noise away. A batch
        that runs out of memory is halved (each try starts from a fresh model)."""
        if self.report.noise is None:
            base, largest = self.base_batch(), self.memory().safe_max_batch
            batch = self.settings.noise_batch or min(8 * base, largest)
            if batch < 2 * self.smallest:
                raise ProbeFailed(f"the noise probe needs a batch of at least {2 * self.smallest}; only {batch} fits")
            while True:
                kept: list = []
                micro_batches = min(8, batch // self.smallest)
                result = try_step(lambda: measure_noise(
                    self.spec, self.backend, batch, micro_batches=micro_batches,
                    snapshots=self.settings.noise_snapshots, warmup_steps=self.settings.noise_warmup_steps,
                    warmup_batch=min(base, batch), seed=self.settings.seed,
                    budget=self._noise_budget(min(base, batch), batch // micro_batches, micro_batches),
                    target_loss=self.settings.target_loss,
                    progress=self.progress(f"measuring gradient noise at batch {batch}"), keep=kept),
                    self.backend.device, f"the noise probe at batch {batch}")
                if result is None:  # out of memory: half the batch, and never larger again
                    if batch // 2 < 2 * self.smallest:
                        raise ProbeFailed(f"the noise probe runs out of memory on {self.backend.device} "
                                          f"even at batch {batch}")
                    self.report.notes.append(f"the noise probe ran out of memory at batch {batch} on "
                                             f"{self.backend.device}: measuring at batch {batch // 2}")
                    largest = batch = batch // 2
                    continue
                if result.scale.resolved or self.settings.noise_batch or batch >= largest:
                    break
                self.report.notes.append(f"gradient noise unresolved at batch {batch}: measuring again at a larger batch")
                batch = min(4 * batch, largest)
            if result.scale.no_signal:
                raise BadInput(f"{self.spec.path}: every gradient of the noise probe was zero: the loss does not "
                               "depend on the trained parameters, so there is no signal to measure")
            if not result.scale.resolved:
                self.report.notes.append(f"the noise scale is not resolved at batch {batch}: the gradient is dominated "
                                         "by noise (B_simple is large or unbounded); --batch-size larger may resolve it")
            if result.trend is not None and result.trend > 0.25:
                self.report.notes.append(f"the noise scale grows along training (B_simple ~ step^{result.trend:.2f}): "
                                         f"the advice uses its latest value (step {result.late_step}); a longer "
                                         "--noise-budget follows it further")
            self.report.noise = result
            self._trained = kept[0] if kept else None
        return self.report.noise

    def _noise_budget(self, train_batch: int, micro: int, micro_batches: int) -> NoiseBudget:
        """A budget in seconds becomes one in steps, planned from the throughput probe's step times when they
        are known: the series' length then does not move with the machine's load (the minimum step times
        hardly do), so neither does the noise scale the advice uses."""
        budget = self.settings.noise_budget
        if budget.seconds is None or self.report.fit is None:
            return budget
        fit, snapshots = self.report.fit, self.settings.noise_snapshots
        step_seconds = fit.seconds(train_batch) + self._data_seconds(train_batch)
        snapshot = micro_batches * fit.seconds(micro) + self._data_seconds(micro * micro_batches)
        planned = series_steps(self.settings.noise_warmup_steps)[:1]
        for step in series_steps(self.settings.noise_warmup_steps)[1:]:
            cost = step * step_seconds + (len(planned) + 1) * snapshots * snapshot
            if cost > budget.seconds:
                break
            planned.append(step)
        return NoiseBudget(seconds=None, steps=planned[-1], planned_from=budget.seconds)


    def recommendation(self) -> Recommendation:
        if self.report.recommendation is None:
            throughput, noise = self.throughput(), self.noise()
            optimizer_seconds = min(p.optimizer_seconds for p in throughput.points)
            limit = self._limit()
            self.report.fit = self._fit_near_candidates(noise.scale.b_simple, limit)
            rec = self._recommend()
            if self.settings.lr_sweep and not distributed.active() and self._trained is not None and rec.learning_rate > 0:
                with watchdog.probe("learning-rate sweep"):
                    rec = self._sweep(rec)
            series = [(p.examples, p.scale.b_simple) for p in noise.series if p.scale.resolved]
            schedule = batch_schedule(self.report.fit, optimizer_seconds, series, rec, limit, self.devices,
                                      self.smallest) if len(series) > 1 else ()
            self.report.recommendation = replace(rec, schedule=schedule)
            self._trace_peaks([p.batch for p in throughput.points] + [rec.plan.micro_batch, self.base_batch()]
                              + [e.plan.micro_batch for e in schedule])
            if self.settings.plan_gpus:
                self._plan_cluster()
        return self.report.recommendation

    def _limit(self) -> int:
        """The largest micro-batch the advice may use: what fits, and below a batch whose step ran out of memory
        (the device has less room now than the memory probe saw)."""
        limit, oom = self.memory().safe_max_batch, self.throughput().out_of_memory_at
        return limit if oom is None else min(limit, oom - 1)

    def _recommend(self, measured: tuple[int, str] | None = None) -> Recommendation:
        noise = self.report.noise
        return recommend(self.report.fit, min(p.optimizer_seconds for p in self.report.throughput.points),
                         noise.scale.b_simple, self.base_batch(), self.base_lr(), self.family(), self._limit(),
                         devices=self.devices, min_micro=self.smallest, base_beta2=self._base_beta2(),
                         warmup_examples=noise.series[-1].examples if noise.series else None, measured=measured)

    def _fit_near_candidates(self, phi: float, limit: int) -> StepTimeFit:
        """The step-time line refitted near the batches the advice weighs (around the goodput optimum),
        twice, so that curvature far from them does not move the recommendation."""
        points = [(p.batch, p.step_seconds) for p in self.report.throughput.points]
        fit = self.report.fit
        for _ in range(2):
            if not (math.isfinite(phi) and fit.alpha > 0):
                break
            fit = fit_step_time(points, around=min(max(math.sqrt(phi * fit.alpha / fit.beta), self.smallest), limit))
        return fit

    def _sweep(self, rec: Recommendation) -> Recommendation:
        """The rule's batch and rate checked by short runs (see probes/sweep.py): rates at the plateau rule's
        batch, then at the plateau's ends for the same counted time; the batch that trains furthest wins."""
        plan, hold = rec.plan, 20
        per_step = plan.accumulation_steps * (self.report.fit.seconds(plan.micro_batch)
                                              + self._data_seconds(plan.micro_batch))
        quarter = math.ceil(0.25 * self.report.noise.series[-1].examples / plan.batch_size)  # of the probed run
        affordable = int(self.settings.sweep_seconds / (TYPICAL_RUNS * per_step)) - hold
        steps = max(20, min(quarter, affordable))
        candidates = [self._candidate(batch, rec, steps) for batch in plateau_candidates(rec.plateau, plan.batch_size)]
        trained = self._trained
        result = try_step(lambda: sweep(self.spec, self.backend, trained.model, trained.opt, candidates,
                                        seed=self.settings.seed, hold_steps=hold,
                                        progress=self.progress("sweeping the learning rate and batch")),
                          self.backend.device, "the learning-rate sweep")
        self._trained = None  # its model and optimizer are not needed again
        if result is None:
            self.report.notes.append("the learning-rate sweep ran out of memory: the batch and rate are the rule's")
            return rec
        self.report.sweep = result
        if result.chosen is None:
            self.report.notes.append("every rate of the learning-rate sweep diverged: the rate is the rule's, "
                                     "and may be too high")
            return rec
        if result.chosen_batch != plan.batch_size:
            rec = self._recommend(measured=(result.chosen_batch, _batch_verdict(result)))
        trial = next(t for t in result.trials if t.candidate.batch == result.chosen_batch)
        rec = with_swept_rate(rec, result.chosen, f"{len(result.runs)} short runs of {result.steps} steps, "
                                                  f"lowest loss {trial.loss:.4g}")
        if len(result.trials) > 1 and result.chosen_batch == plan.batch_size:
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
        fit, limit = self.report.fit, self._limit()
        optimizer_seconds = min(p.optimizer_seconds for p in self.report.throughput.points)
        plan = plan_at(fit, optimizer_seconds, batch, limit, self.devices, self.smallest)
        factor, _ = learning_rate_factor(self.report.noise.scale.b_simple, rec.base_batch, plan.batch_size, rec.optimizer_family)
        beta2 = beta2_for(rec.base_beta2, rec.base_batch, plan.batch_size) if rec.optimizer_family == "adam" and \
            rec.base_beta2 else None
        return Candidate(plan.micro_batch, plan.accumulation_steps, rec.base_lr * factor,
                         max(8, round(steps * rec.plan.step_seconds / plan.step_seconds)), beta2)

    def _data_seconds(self, batch: int) -> float:
        """The model file's batch(batch) alone, from a line fitted to the throughput probe's minimum times of
        it (the step's own time is `self.report.fit`)."""
        points = self.report.throughput.points
        return fit_step_time([(p.batch, max(p.batch_seconds, 1e-9)) for p in points]).seconds(batch)

    def _base_beta2(self) -> float | None:
        betas = self._optimizer().param_groups[0].get("betas")
        return float(betas[1]) if isinstance(betas, (tuple, list)) and len(betas) == 2 else None

    def _plan_cluster(self) -> None:
        """--plan-gpus N: the step on N GPUs predicted from the measured fit and the profile's interconnect."""
        profile = self.settings.profile
        bandwidth, latency = profile.get("interconnect_bandwidth_gb_per_s"), profile.get("interconnect_latency_us")
        if bandwidth is None:
            raise BadInput(f"--plan-gpus: the profile {profile['name']!r} gives no interconnect_bandwidth_gb_per_s")
        throughput, noise = self.report.throughput, self.report.noise
        self.report.cluster = cluster_plan(
            self.report.fit, min(p.optimizer_seconds for p in throughput.points), noise.scale.b_simple,
            self.base_batch(), self.base_lr(), self.family(), self.memory().safe_max_batch,
            self.settings.plan_gpus, distributed.bucket_bytes(self._optimizer_model()), bandwidth, latency or 0.0,
            profile["name"], self.backend.measured_on, measured_devices=self.devices, min_micro=self.smallest)

    def _trace_peaks(self, sizes: list[int]) -> None:
        """Trace the peak of every batch the report shows (cheap under FakeTensorMode), so none is
        an extrapolation. Sizes below the smallest that trains (a base batch of 1 with BatchNorm) are not
        steps the model can take, so they are not traced."""
        peaks = self.memory().peaks
        for size in sizes:
            if size not in peaks and self.smallest <= size <= self.memory().max_batch:
                peaks[size] = self._tracer.peak(size)

    def base_batch(self) -> int:
        chosen = self.settings.base_batch or self.spec.base_batch_size
        if chosen is None:
            self.report.notes.append(f"no --base-batch and no BASE_BATCH_SIZE in the model file: "
                                     f"assuming the learning rate was tuned at batch {DEFAULT_BASE_BATCH}")
            chosen = self.settings.base_batch = DEFAULT_BASE_BATCH
        return chosen

    def base_lr(self) -> float:
        if self.settings.base_lr is None:
            self.settings.base_lr = float(self._optimizer().param_groups[0]["lr"])
        return self.settings.base_lr

    def family(self) -> str:
        return optimizer_family([cls.__name__ for cls in type(self._optimizer()).__mro__])

    def _optimizer(self):
        if not hasattr(self, "_opt"):
            self._opt = self.spec.optimizer(self._optimizer_model())
        return self._opt

    def _optimizer_model(self):
        if not hasattr(self, "_model"):
            self._model = self.spec.model()
        return self._model

    def finish(self) -> Report:
        release_trace_caches()
        self.report.notes.extend(n for n in self.spec.notes if n not in self.report.notes)
        self.report.seconds = time.perf_counter() - self._started
        return self.report


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


PROBES = ("memory", "throughput", "noise", "recommendation")


def run_probe(model: str, device: str, settings: Settings, probe: str, progress=no_progress) -> Report:
    """One command's work: resolve the device, load the model file, run `probe` (and what it needs)."""
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}")
    if settings.plan_gpus and settings.profile is None:
        raise BadInput("--plan-gpus needs --profile: the interconnect's bandwidth and latency come from it")
    backend = resolve_rank_device(device, distributed.local_rank()) if distributed.in_job() else resolve_device(device)
    with distributed.process_group(backend.device, settings.collective_timeout), _cpu_threads(backend) as note:
        advisor = Advisor(load_spec(model), backend, settings, progress,
                          contract_first=not (probe == "memory" and settings.profile is not None))
        if note:
            advisor.report.notes.append(note)
        getattr(advisor, probe)()
        return advisor.finish()


@contextlib.contextmanager
def _cpu_threads(backend: Backend):
    """On a CPU already busy with other work, fewer intra-op threads for the probes (see
    device.threads_beside_load); put back afterwards. A distributed job's ranks keep the launcher's."""
    current = torch.get_num_threads()
    if backend.is_cuda or distributed.in_job() or not hasattr(os, "getloadavg"):
        yield None
        return
    load = os.getloadavg()[0]
    threads = threads_beside_load(current, os.cpu_count() or 1, load)
    if threads == current:
        yield None
        return
    torch.set_num_threads(threads)
    try:
        yield (f"the machine is busy (load {load:.1f} on {os.cpu_count()} cores): probing with {threads} CPU "
               f"thread{'s' if threads > 1 else ''} instead of {current}, so that timings are the model's")
    finally:
        torch.set_num_threads(current)


class WithBuckets:
    """A tracer whose every peak carries DDP's gradient buckets (`extra` bytes) on top of the traced step."""

    def __init__(self, tracer: StepTracer, extra: int):
        self.tracer, self.extra, self.fake = tracer, extra, tracer.fake

    def peak(self, batch: int) -> int:
        return self.tracer.peak(batch) + self.extra
