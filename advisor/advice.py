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
from dataclasses import dataclass, field

ADAPTIVE_OPTIMIZERS = {"Adam", "AdamW", "Adamax", "NAdam", "RAdam", "SparseAdam", "Adagrad", "Adadelta",
                       "RMSprop", "Adafactor", "LAMB", "Lamb", "Lion"}
WARMUP_FACTOR_THRESHOLD = 2.0     # Goyal et al. 2017: warm up when the learning rate grows past this
WARMUP_STEPS_PER_DOUBLING = 100   # a heuristic, stated as such in the output


@dataclass(frozen=True)
class StepTimeFit:
    alpha: float  # seconds per step independent of the batch
    beta: float   # seconds per example

    def seconds(self, batch: float) -> float:
        return self.alpha + self.beta * batch


def fit_step_time(points: list[tuple[int, float]]) -> StepTimeFit:
    """Least squares on relative error (weights 1/T²), so small and large batches count alike.
    α is kept ≥ 0 and β > 0; one point gives a pure per-example cost."""
    if not points:
        raise ValueError("no throughput points to fit")
    weights = [1 / t**2 for _, t in points]
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


def warmup_steps(lr_factor: float) -> int:
    """Linear warm-up from lr₀ when the learning rate grows more than 2× (Goyal et al. 2017);
    its length, 100 steps per doubling, is a rule of thumb."""
    if lr_factor <= WARMUP_FACTOR_THRESHOLD:
        return 0
    return round(WARMUP_STEPS_PER_DOUBLING * math.log2(lr_factor))


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


def recommend(fit: StepTimeFit, optimizer_seconds: float, noise_scale: float, base_batch: int, base_lr: float,
              family: str, max_micro: int, devices: int = 1, min_micro: int = 1) -> Recommendation:
    plan = best_plan(fit, optimizer_seconds, noise_scale, base_batch, max_micro, devices=devices, min_micro=min_micro)
    base = plan_for_batch(fit, optimizer_seconds, base_batch, max_micro, devices, min_micro)
    gain = goodput(plan, noise_scale, base_batch) / goodput(base, noise_scale, base_batch)
    factor, rule = learning_rate_factor(noise_scale, base_batch, plan.batch_size, family)
    ideal = math.sqrt(noise_scale * fit.alpha / fit.beta) if fit.alpha > 0 else 0.0
    reasons = [f"goodput B/T(B)*E(B) is highest at batch {plan.batch_size}: "
               f"{gain:.2f}x the goodput of the base batch {base_batch}"]
    if devices > 1:
        reasons.append(f"{devices} data-parallel devices: micro-batch {plan.micro_batch} per device x "
                       f"{plan.accumulation_steps} accumulation steps x {devices} devices = global batch "
                       f"{plan.batch_size}; the learning rate is for the global batch")
    if plan.accumulation_steps > 1:
        reasons.append(f"the best batch exceeds what fits in memory ({max_micro}): "
                       f"{plan.accumulation_steps} accumulation steps of {plan.micro_batch} pay, "
                       "because the optimizer step is paid once per update")
    elif ideal > max_micro:
        reasons.append(f"the unconstrained optimum B*=sqrt(phi*alpha/beta)={ideal:.0f} is above the memory limit "
                       f"{max_micro}; accumulation to reach it does not pay here")
    if math.isinf(noise_scale):
        reasons.append("the gradient noise dominated at every batch probed (|G|^2 not resolved): statistical "
                       "efficiency is taken as flat, so throughput decides")
    reasons.append(f"learning rate x{factor:.3g} by the {family} rule for batch {plan.batch_size} "
                   f"(noise scale {noise_scale:.3g})")
    steps = warmup_steps(factor)
    if steps:
        reasons.append(f"warm up linearly from {base_lr:.3g} over {steps} steps: the rate grows more than 2x "
                       f"(Goyal et al. 2017; the length is a rule of thumb)")
    return Recommendation(plan, base_lr * factor, factor, rule, steps, family, base_batch, base_lr,
                          statistical_efficiency(plan.batch_size, noise_scale, base_batch), gain, reasons)


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
    rec = recommend(with_comm, optimizer_seconds + allreduce, noise_scale, base_batch, base_lr, family, max_micro,
                    devices=gpus, min_micro=min_micro)
    measured = f"{measured_devices} ranks" if measured_devices > 1 else "one device"
    method = (f"predicted: per-device step time {measured_on} ({measured}) plus a ring all-reduce of "
              f"{grad_bytes} gradient bytes over {gpus} GPUs from the profile {profile!r}'s interconnect "
              f"({bandwidth_gb_per_s:g} GB/s, {latency_us:g} us), 2(n-1)/n*bytes/bandwidth + 2(n-1)*latency, "
              "paid once per update with no overlap with the backward pass assumed")
    return ClusterPlan(gpus, profile, grad_bytes, allreduce, rec, method)
