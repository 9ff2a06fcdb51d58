"""From measurements to advice: step-time fit, goodput, accumulation and learning-rate rules. Pure maths.

Step time T(B) = α + β·B. Statistical efficiency relative to the base batch B₀ is
E(B) = (φ + B₀)/(φ + B) with φ = B_simple, and goodput is B/T(B)·E(B) (Pollux, OSDI'21).
A batch above the memory limit is reached by accumulating k micro-batches of m: the optimizer step
(time τ) is paid once, so T = k·(α − τ + β·m) + τ, which is what decides whether accumulation pays.
On n data-parallel devices the fit is per device (micro-batch m each) and the global batch is n·k·m.
A cluster plan adds the ring all-reduce of the gradients once per update, 2(n−1)/n · bytes / bandwidth
+ 2(n−1)·latency, with no overlap with the backward pass assumed (an upper bound on the step).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

ADAPTIVE_OPTIMIZERS = {"Adam", "AdamW", "Adamax", "NAdam", "RAdam", "SparseAdam", "Adagrad", "Adadelta",
                       "RMSprop", "Adafactor", "LAMB", "Lamb", "Lion"}
WARMUP_FACTOR_THRESHOLD = 2.0     # Goyal et al. 2017: warm up when the learning rate grows past this
WARMUP_FRACTION = 0.1             # of the run the probe saw
PLATEAU_TOLERANCE = 0.05          # batches within 5% of the best goodput are all "best"
NEAR_OCTAVES = 2.0                # the local step-time fit's width, in octaves of batch size
BETA2_RATIO = 2.0                 # advise β2 when the batch moves this far from the base (either way)
SCHEDULE_STEP = 1.5               # a batch schedule's steps grow the batch at least this much each
CANDIDATES_APART = 1.5            # a sweep's candidate batches differ at least this much
SNAP = 2 ** 0.25                  # a batch moves to a timed batch this near it (a quarter octave)


@dataclass(frozen=True)
class StepTimeFit:
    alpha: float  # seconds per step independent of the batch
    beta: float   # seconds per example

    def seconds(self, batch: float) -> float:
        return self.alpha + self.beta * batch


def fit_step_time(points: list[tuple[int, float]], around: float | None = None) -> StepTimeFit:
    """Least squares on relative error (weights 1/T²), so small and large batches count alike; with
    `around`, points are also weighted by closeness to that batch (a Gaussian in log batch, 2 octaves
    wide), so the line is right where the candidates are rather than across the whole range.
    α is kept ≥ 0 and β > 0; one point gives a pure per-example cost."""
    if not points:
        raise ValueError("no throughput points to fit")
    weights = [1 / t**2 for _, t in points]
    if around is not None and around > 0:
        weights = [w * math.exp(-0.5 * (math.log2(b / around) / NEAR_OCTAVES) ** 2) for w, (b, _) in zip(weights, points)]
    sw = sum(weights)
    sb = sum(w * b for w, (b, _) in zip(weights, points))
    st = sum(w * t for w, (_, t) in zip(weights, points))
    sbb = sum(w * b * b for w, (b, _) in zip(weights, points))
    sbt = sum(w * b * t for w, (b, t) in zip(weights, points))
    det = sw * sbb - sb * sb
    if len(points) >= 2 and det > 0:
        beta = (sw * sbt - sb * st) / det
        alpha = (st - beta * sb) / sw
        if alpha >= 0 and beta > 0:
            return StepTimeFit(alpha, beta)
    # Through the origin: time proportional to the batch.
    return StepTimeFit(0.0, max(sbt / sbb, 1e-12))


def statistical_efficiency(batch: float, noise_scale: float, base_batch: int) -> float:
    """Progress per example at `batch` relative to `base_batch` (McCandlish et al. 2018).
    An unbounded noise scale (noise dominates the gradient) makes every batch equally efficient."""
    if math.isinf(noise_scale):
        return 1.0
    return (noise_scale + base_batch) / (noise_scale + batch)


@dataclass(frozen=True)
class Plan:
    micro_batch: int         # per device
    accumulation_steps: int
    step_seconds: float      # one optimizer step, all micro-batches included
    devices: int = 1         # data-parallel ranks

    @property
    def batch_size(self) -> int:
        """The global batch: devices × micro-batch × accumulation steps."""
        return self.devices * self.micro_batch * self.accumulation_steps


def plan_seconds(fit: StepTimeFit, optimizer_seconds: float, micro: int, steps: int) -> float:
    per_micro = max(fit.alpha - optimizer_seconds, 0.0) + fit.beta * micro
    return steps * per_micro + min(optimizer_seconds, fit.alpha)


def goodput(plan: Plan, noise_scale: float, base_batch: int) -> float:
    """Base-batch-equivalent examples per second."""
    return plan.batch_size / plan.step_seconds * statistical_efficiency(plan.batch_size, noise_scale, base_batch)


def make_plan(fit: StepTimeFit, optimizer_seconds: float, micro: int, steps: int = 1, devices: int = 1) -> Plan:
    return Plan(micro, steps, plan_seconds(fit, optimizer_seconds, micro, steps), devices)


def plan_for_batch(fit: StepTimeFit, optimizer_seconds: float, batch: int, max_micro: int, devices: int = 1,
                   min_micro: int = 1) -> Plan:
    """The fewest accumulation steps that reach about `batch` (global) with micro-batches that fit
    and train (`min_micro`: 2 where batch 1 cannot, as with BatchNorm)."""
    steps = math.ceil(batch / (max_micro * devices))
    return make_plan(fit, optimizer_seconds, max(math.ceil(batch / (steps * devices)), min_micro), steps, devices)


def best_plan(fit: StepTimeFit, optimizer_seconds: float, noise_scale: float, base_batch: int,
              max_micro: int, max_accumulation: int = 64, devices: int = 1, min_micro: int = 1) -> Plan:
    """The micro-batch × accumulation that maximises goodput. For k steps on n devices the optimum
    global batch is √(φ·A_k·n/β) with A_k the batch-independent time of the whole k-step update; on
    one device k = 1 gives DESIGN's B* = √(φ·α/β), clipped to [min_micro, max_micro]: a micro-batch
    below the smallest that trains (2 with BatchNorm) is never advised, whatever the timings say."""
    best, best_value = None, -1.0
    for steps in range(1, max_accumulation + 1):
        fixed = plan_seconds(fit, optimizer_seconds, 0, steps)
        ideal = max_micro if math.isinf(noise_scale) else min(
            math.sqrt(noise_scale * fixed * devices / fit.beta) / (steps * devices), max_micro)
        for micro in {math.floor(ideal), math.ceil(ideal)}:
            plan = make_plan(fit, optimizer_seconds, min(max(micro, min_micro), max_micro), steps, devices)
            value = goodput(plan, noise_scale, base_batch)
            if value > best_value * (1 + 1e-12):  # ties go to fewer accumulation steps
                best, best_value = plan, value
    return best


def optimizer_family(class_names: list[str]) -> str:
    """'adam' for adaptive (per-coordinate) optimizers, else 'sgd'. Takes the class's MRO names."""
    return "adam" if ADAPTIVE_OPTIMIZERS.intersection(class_names) else "sgd"


def learning_rate_factor(noise_scale: float, base_batch: int, batch: int, family: str) -> tuple[float, str]:
    """lr/lr₀ for moving from B₀ to B, and the rule's name."""
    ratio = batch / base_batch if math.isinf(noise_scale) else (1 + noise_scale / base_batch) / (1 + noise_scale / batch)
    if family == "adam":
        return math.sqrt(ratio), "adam-sqrt: lr0*sqrt((1+phi/B0)/(1+phi/B)) (Malladi et al. 2022)"
    return ratio, "sgd-noise: lr0*(1+phi/B0)/(1+phi/B) (McCandlish et al. 2018)"


def warmup_steps(lr_factor: float, examples: int, batch: int) -> int:
    """A linear warm-up from lr₀ when the learning rate grows more than 2× (Goyal et al. 2017), over a
    tenth of the run as the probe saw it: `examples`, what the base setting trained on until the rate was
    measured (the whole run, with --target-loss), at the new batch. Sized to the run, not a fixed number
    of steps per doubling."""
    if lr_factor <= WARMUP_FACTOR_THRESHOLD:
        return 0
    return max(1, math.ceil(WARMUP_FRACTION * examples / batch))


def beta2_for(beta2: float, base_batch: int, batch: int) -> float | None:
    """β2 with its half-life kept in examples (Marek et al. 2025: β2' = β2^(B/B₀)), when the batch moves at
    least 2× from the base; None when it does not (β2 as it is)."""
    ratio = batch / base_batch
    if 1 / BETA2_RATIO < ratio < BETA2_RATIO or not 0 < beta2 < 1:
        return None
    return beta2 ** ratio


def plan_at(fit: StepTimeFit, optimizer_seconds: float, batch: int, max_micro: int, devices: int = 1,
            min_micro: int = 1) -> Plan:
    """The plan for a candidate global batch: one step of micro-batches that fit, or above the memory
    limit, full micro-batches accumulated (the batch rounded up to a multiple of them), since a partly
    filled last micro-batch only costs throughput."""
    if batch <= max_micro * devices:
        return plan_for_batch(fit, optimizer_seconds, batch, max_micro, devices, min_micro)
    return make_plan(fit, optimizer_seconds, max_micro, math.ceil(batch / (max_micro * devices)), devices)


@dataclass(frozen=True)
class Plateau:
    low: int        # the smallest global batch within the tolerance of the best goodput
    high: int       # the largest
    best: int       # the best goodput's batch
    tolerance: float


def goodput_plateau(fit: StepTimeFit, optimizer_seconds: float, noise_scale: float, base_batch: int,
                    max_micro: int, devices: int = 1, min_micro: int = 1, tolerance: float = PLATEAU_TOLERANCE,
                    max_accumulation: int = 64) -> Plateau:
    """The global batches whose goodput is within `tolerance` of the best (see `plan_at`). Goodput is
    unimodal in the batch, so the plateau is an interval: its ends are found exactly (bisection on
    integers) from the best of a geometric scan."""
    lowest, highest = min_micro * devices, max_micro * devices * max_accumulation

    def value(batch: int) -> float:
        return goodput(plan_at(fit, optimizer_seconds, batch, max_micro, devices, min_micro), noise_scale, base_batch)

    scan = sorted({lowest, highest, *(round(lowest * (highest / lowest) ** (i / 400)) for i in range(401))})
    best = max(scan, key=value)
    threshold = (1 - tolerance) * value(best)

    def edge(inside: int, outside: int) -> int:
        while abs(outside - inside) > 1:
            mid = (inside + outside) // 2
            inside, outside = (mid, outside) if value(mid) >= threshold else (inside, mid)
        return inside

    low = lowest if value(lowest) >= threshold else edge(best, lowest)
    high = highest if value(highest) >= threshold else edge(best, highest)
    return Plateau(low, high, best, tolerance)


def nearest_on_plateau(plateau: Plateau, base_batch: int) -> int:
    """The plateau rule's batch: the base itself when it is on the plateau, else the plateau's nearer end."""
    return min(max(base_batch, plateau.low), plateau.high)


def snapped(batch: int, timed: Sequence[int] = (), within: float = SNAP) -> int:
    """The timed batch nearest `batch` when one lies within `within` times of it, else `batch`. Between the
    batches the throughput probe timed, a step's cost is the line through them, and kernels run fastest at
    the aligned sizes it times (powers of two): on the LSTM benchmark batch 18 took 6.47 ms a step where
    the line through 16 (5.09 ms) and 32 (8.58 ms) says 5.5, so 18 cost 13% more per example than 16."""
    near = [t for t in timed if max(t, batch) <= within * min(t, batch)]
    return min(near, key=lambda t: (abs(math.log(t / batch)), t)) if near else batch


def plateau_candidates(plateau: Plateau, chosen: int, apart: float = CANDIDATES_APART,
                       timed: Sequence[int] = ()) -> list[int]:
    """The batches a sweep tries: the plateau rule's `chosen` first, then the plateau's ends (each moved to
    a timed batch near it, see `snapped`), each kept only when it is at least `apart` times from every
    batch already kept (nearer ones would measure the same)."""
    kept = [chosen]
    for end in (snapped(plateau.low, timed), snapped(plateau.high, timed)):
        if all(max(end, k) >= apart * min(end, k) for k in kept):
            kept.append(end)
    return kept


@dataclass(frozen=True)
class ScheduleEntry:
    """From `from_step` (this schedule's own steps; `from_examples` examples seen) train at this batch and rate."""
    from_step: int
    from_examples: int
    plan: Plan
    learning_rate: float
    noise_scale: float


@dataclass(frozen=True)
class Recommendation:
    plan: Plan
    learning_rate: float
    lr_factor: float
    lr_rule: str
    warmup_steps: int
    optimizer_family: str
    base_batch: int
    base_lr: float
    efficiency: float
    goodput_vs_base: float
    reasons: list[str] = field(default_factory=list)
    plateau: Plateau | None = None
    rule_learning_rate: float | None = None  # what the rule gives; learning_rate is the sweep's when one ran
    lr_source: str = "rule"                  # "rule", or "sweep" (measured)
    beta2: float | None = None               # advised β2 (Adam family, batch far from the base), else None
    base_beta2: float | None = None
    schedule: tuple[ScheduleEntry, ...] = ()
    warmup_examples: int = 0


def rule_recommendation(fit: StepTimeFit, optimizer_seconds: float, noise_scale: float, base_batch: int,
                        base_lr: float, family: str, max_micro: int, devices: int = 1, min_micro: int = 1,
                        base_beta2: float | None = None, warmup_examples: int | None = None,
                        tolerance: float = PLATEAU_TOLERANCE, measured: tuple[int, str] | None = None,
                        timed: Sequence[int] = ()) -> Recommendation:
    """The batch: of the plateau of batches within `tolerance` of the best goodput, the one closest to the
    base batch (the base itself when it is on the plateau): a deterministic rule that timing noise moves
    only as far as it moves the plateau's edge, and the smallest change from a setting known to train;
    an end moves to a `timed` batch near it (see `snapped`); or, with `measured` (batch, how), the batch
    that short runs measured best among the plateau's.
    The learning rate: the rule for that batch (a sweep may replace it: `with_swept_rate`)."""
    plateau = goodput_plateau(fit, optimizer_seconds, noise_scale, base_batch, max_micro, devices, min_micro, tolerance)
    nearest = nearest_on_plateau(plateau, base_batch)
    chosen = measured[0] if measured else snapped(nearest, timed) if nearest != base_batch else nearest
    plan = plan_at(fit, optimizer_seconds, chosen, max_micro, devices, min_micro)
    base = plan_for_batch(fit, optimizer_seconds, base_batch, max_micro, devices, min_micro)
    best = plan_at(fit, optimizer_seconds, plateau.best, max_micro, devices, min_micro)
    gain = goodput(plan, noise_scale, base_batch) / goodput(base, noise_scale, base_batch)
    best_gain = goodput(best, noise_scale, base_batch) / goodput(base, noise_scale, base_batch)
    factor, rule = learning_rate_factor(noise_scale, base_batch, plan.batch_size, family)
    ideal = math.sqrt(noise_scale * fit.alpha / fit.beta) if fit.alpha > 0 else 0.0
    where = (measured[1] if measured else "the base batch is on it, so it stays" if plan.batch_size == base_batch
             else f"batch {plan.batch_size} is the plateau's end nearest the base batch {base_batch}"
             if plan.batch_size == nearest else f"batch {plan.batch_size}, a batch the throughput probe timed, is "
             f"the nearest to the plateau's end nearest the base batch ({nearest}); between timed batches a step "
             "can cost more than the line through them says")
    reasons = [f"goodput B/T(B)*E(B) is within {tolerance:.0%} of its best ({best_gain:.2f}x the base's, at batch "
               f"{plateau.best}) for batches {plateau.low} to {plateau.high}: {where} ({gain:.2f}x the base's goodput)"]
    if devices > 1:
        reasons.append(f"{devices} data-parallel devices: micro-batch {plan.micro_batch} per device x "
                       f"{plan.accumulation_steps} accumulation steps x {devices} devices = global batch "
                       f"{plan.batch_size}; the learning rate is for the global batch")
    if plan.accumulation_steps > 1:
        reasons.append(f"the batch exceeds what fits in memory ({max_micro}): "
                       f"{plan.accumulation_steps} accumulation steps of {plan.micro_batch} pay, "
                       "because the optimizer step is paid once per update")
    elif ideal > max_micro and plateau.high <= max_micro * devices:
        reasons.append(f"the unconstrained optimum B*=sqrt(phi*alpha/beta)={ideal:.0f} is above the memory limit "
                       f"{max_micro}; accumulation to reach it does not pay here")
    if math.isinf(noise_scale):
        reasons.append("the gradient noise dominated at every batch probed (|G|^2 not resolved): statistical "
                       "efficiency is taken as flat, so throughput decides")
    reasons.append(f"learning rate x{factor:.3g} by the {family} rule for batch {plan.batch_size} "
                   f"(noise scale {noise_scale:.3g})")
    beta2 = beta2_for(base_beta2, base_batch, plan.batch_size) if family == "adam" and base_beta2 else None
    if beta2 is not None:
        reasons.append(f"beta2 {base_beta2:g} -> {beta2:.4g}: its half-life kept in examples, beta2^(B/B0) "
                       "(Marek et al. 2025), as the batch moves far from the base")
    examples = 10 * base_batch if warmup_examples is None else warmup_examples
    rec = Recommendation(plan, base_lr * factor, factor, rule, 0, family, base_batch, base_lr,
                         statistical_efficiency(plan.batch_size, noise_scale, base_batch), gain, reasons, plateau,
                         base_lr * factor, "rule", beta2, base_beta2, (), examples)
    return _with_warmup(rec)


def with_swept_rate(rec: Recommendation, learning_rate: float, how: str) -> Recommendation:
    """The recommendation with the rate a sweep measured in place of the rule's (which stays reported).
    No warm-up: the sweep's runs from initialisation trained at this rate from their first step and stayed
    stable, which is the evidence a warm-up stands in for (on the LSTM benchmark a warm-up of a tenth of the
    run cost 20% more steps to the target at the same batch and rate, and nothing on the MLP)."""
    reasons = [r for r in rec.reasons if not r.startswith("warm up")]
    reasons.append(f"learning rate {learning_rate:.4g} measured by a sweep ({how}); the rule gave "
                   f"{rec.rule_learning_rate:.4g}")
    if learning_rate / rec.base_lr > WARMUP_FACTOR_THRESHOLD:
        reasons.append("no warm-up: the sweep's runs from initialisation trained at this rate from their first "
                       "step without diverging")
    return replace(rec, learning_rate=learning_rate, lr_factor=learning_rate / rec.base_lr, lr_source="sweep",
                   reasons=reasons, warmup_steps=0)


def _with_warmup(rec: Recommendation) -> Recommendation:
    steps = warmup_steps(rec.lr_factor, rec.warmup_examples, rec.plan.batch_size)
    if not steps:
        return replace(rec, warmup_steps=0)
    return replace(rec, warmup_steps=steps, reasons=rec.reasons + [
        f"warm up linearly from {rec.base_lr:.3g} over {steps} steps: the rate grows more than 2x (Goyal et al. "
        f"2017); a tenth of the {rec.warmup_examples} examples the base setting trained on in the probe"])


def batch_schedule(fit: StepTimeFit, optimizer_seconds: float, series: list[tuple[int, float]],
                   final: Recommendation, max_micro: int, devices: int = 1, min_micro: int = 1) -> tuple[ScheduleEntry, ...]:
    """A batch-size warm-up when the noise scale grows along training: for each point of the series
    (examples seen, B_simple), the batch the same plateau rule picks for that noise scale (never smaller
    than the previous one), ending at the single recommendation. Rates follow the rule, scaled by what
    the sweep found at the final batch (`final.learning_rate / final.rule_learning_rate`). Empty when
    the series would not change the batch."""
    correction = final.learning_rate / final.rule_learning_rate if final.rule_learning_rate else 1.0
    entries: list[tuple[int, Plan, float, float]] = []
    for examples, phi in series:
        if not math.isfinite(phi) or phi <= 0:
            continue
        rec = rule_recommendation(fit, optimizer_seconds, phi, final.base_batch, final.base_lr, final.optimizer_family,
                        max_micro, devices, min_micro)
        plan = rec.plan
        if entries and plan.batch_size < SCHEDULE_STEP * entries[-1][1].batch_size:
            continue
        if plan.batch_size * SCHEDULE_STEP > final.plan.batch_size:
            break
        entries.append((examples if entries else 0, plan, rec.learning_rate * correction, phi))
    if not entries:
        return ()
    later = max(entries[-1][0] + 1, series[-1][0])
    entries.append((later, final.plan, final.learning_rate, series[-1][1]))
    schedule, step = [], 0
    for i, (examples, plan, lr, phi) in enumerate(entries):
        if i:
            previous_examples, previous_plan = entries[i - 1][0], entries[i - 1][1]
            step += math.ceil((examples - previous_examples) / previous_plan.batch_size)
        schedule.append(ScheduleEntry(step, examples, plan, lr, phi))
    return tuple(schedule)


def candidate_rows(fit: StepTimeFit, optimizer_seconds: float, noise_scale: float, rec: Recommendation,
                   timed: dict[int, float], asked: list[int], safe_max_batch: int,
                   peak_at, tracked: set[int]) -> list[dict]:
    """The candidates table's rows: the timed batch sizes (`timed`: per-device batch -> measured step seconds),
    the sizes asked for, the base, the recommendation and the largest that fits; each figure says where it
    came from. `peak_at(micro)`: a micro-batch's peak bytes; `tracked`: the micro-batches whose peak was traced."""
    phi, base = noise_scale, rec.base_batch
    n = rec.plan.devices  # batches here are global: n devices x micro-batch x accumulation
    timed_global = {n * b: seconds for b, seconds in timed.items()}
    sizes = sorted(set(timed_global) | {n * b for b in asked} | {base, rec.plan.batch_size, n * safe_max_batch})
    base_goodput = goodput(plan_for_batch(fit, optimizer_seconds, base, safe_max_batch, n), phi, base)
    rows = []
    for size in sizes:
        plan = rec.plan if size == rec.plan.batch_size else (
            make_plan(fit, optimizer_seconds, size // n, 1, n) if size <= n * safe_max_batch and size % n == 0
            else plan_for_batch(fit, optimizer_seconds, size, safe_max_batch, n))
        measured = size in timed_global and plan.accumulation_steps == 1
        seconds = timed_global[size] if measured else plan.step_seconds
        rows.append({
            "batch": size, "micro_batch": plan.micro_batch, "accumulation_steps": plan.accumulation_steps,
            "devices": n,
            "peak_bytes": peak_at(plan.micro_batch),
            "peak_source": "tracked" if plan.micro_batch in tracked else "estimated",
            "step_seconds": seconds, "step_source": "measured" if measured else "estimated",
            "samples_per_second": size / seconds,
            "statistical_efficiency": statistical_efficiency(size, phi, base),
            "goodput_vs_base": goodput(plan, phi, base) / base_goodput,
            "recommended": size == rec.plan.batch_size, "base": size == base,
        })
    return rows


def ring_allreduce_seconds(grad_bytes: float, devices: int, bandwidth_gb_per_s: float, latency_us: float) -> float:
    """A ring all-reduce of `grad_bytes` over `devices`: 2(n−1)/n · bytes / bandwidth + 2(n−1) · latency
    (reduce-scatter then all-gather, n−1 hops each). Bandwidth in GB/s (10⁹ bytes), latency in µs."""
    if devices <= 1:
        return 0.0
    n = devices
    return 2 * (n - 1) / n * grad_bytes / (bandwidth_gb_per_s * 1e9) + 2 * (n - 1) * latency_us * 1e-6


@dataclass(frozen=True)
class ClusterPlan:
    """A prediction for `gpus` devices: the measured per-device step plus the ring all-reduce."""
    gpus: int
    profile: str
    gradient_bytes: int
    allreduce_seconds: float
    recommendation: Recommendation
    method: str


def cluster_plan(fit: StepTimeFit, optimizer_seconds: float, noise_scale: float, base_batch: int, base_lr: float,
                 family: str, max_micro: int, gpus: int, grad_bytes: int, bandwidth_gb_per_s: float,
                 latency_us: float, profile: str, measured_on: str, measured_devices: int = 1,
                 min_micro: int = 1) -> ClusterPlan:
    """The goodput-best plan on `gpus` devices, the all-reduce paid once per optimizer step: it is added
    to the batch-independent time α and to the once-per-update time τ, so T = k·(α − τ + β·m) + τ + AR."""
    allreduce = ring_allreduce_seconds(grad_bytes, gpus, bandwidth_gb_per_s, latency_us)
    with_comm = StepTimeFit(fit.alpha + allreduce, fit.beta)
    rec = rule_recommendation(with_comm, optimizer_seconds + allreduce, noise_scale, base_batch, base_lr, family, max_micro,
                    devices=gpus, min_micro=min_micro)
    measured = f"{measured_devices} ranks" if measured_devices > 1 else "one device"
    method = (f"predicted: per-device step time {measured_on} ({measured}) plus a ring all-reduce of "
              f"{grad_bytes} gradient bytes over {gpus} GPUs from the profile {profile!r}'s interconnect "
              f"({bandwidth_gb_per_s:g} GB/s, {latency_us:g} us), 2(n-1)/n*bytes/bandwidth + 2(n-1)*latency, "
              "paid once per update with no overlap with the backward pass assumed")
    return ClusterPlan(gpus, profile, grad_bytes, allreduce, rec, method)
