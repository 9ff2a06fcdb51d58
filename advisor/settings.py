"""What a run is asked to do, checked in this one place, for the command line and the Python API alike.

`make_settings` turns options as a person gives them (sizes as text, a profile's name, a noise budget
as "30s") into a frozen `Settings`, or raises a BadInput naming the option, the value and what is
expected. Every number is bounded, so no later step overflows or runs for ever. Messages name options
as the caller spells them: `--noise-warmup-steps` on the command line, `noise_warmup_steps` in Python.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from advisor.errors import BadInput
from advisor.probes.noise import NoiseBudget
from advisor.watchdog import DEFAULT_COLLECTIVE_TIMEOUT, DEFAULT_STEP_TIMEOUT

MAX_BATCH = 10**12          # examples: a batch, a base batch, a floor; far above any device's memory
MAX_STEPS = 100_000         # noise warm-up steps, snapshots: each is a training step or more
MIN_SNAPSHOTS = 4           # the bootstrap interval over snapshots needs a few of them
MAX_SECONDS = 1e7           # step and collective time-outs (about 115 days)
MAX_PLAN_GPUS = 1_000_000
MAX_BASE_LR = 1e6
MAX_NOISE_BUDGET = 10**7    # seconds or steps


@dataclass(frozen=True)
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
    batch_sizes: tuple[int, ...] | None = None
    max_step_seconds: float = 1.0
    seed: int = 0
    step_timeout: float = DEFAULT_STEP_TIMEOUT
    profile: dict | None = None  # a hardware profile whose memory is the budget
    collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT
    plan_gpus: int | None = None  # predict the step on this many GPUs from the profile's interconnect
    shard: int | None = None  # the peak on one GPU of N under full sharding (with a profile)
    # with shard, what the N GPUs shard: 3 the parameters too (FSDP's full sharding), 2 the gradients and the
    # optimizer state, 1 the optimizer state alone (ZeroRedundancyOptimizer)
    zero_stage: int = 3
    shard_wrap: str = "layers"  # with shard: FSDP's units (memory/shard.py WRAPS)
    attention: str | None = None  # the kernel the profiled GPU runs (else the profile's, else auto)

    def to_dict(self) -> dict:
        """Plain JSON values (the --isolate child gets its settings so)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Settings":
        budget = data.get("noise_budget")
        sizes = data.get("batch_sizes")
        return cls(**{**data, "noise_budget": NoiseBudget(**budget) if isinstance(budget, dict) else NoiseBudget(),
                      "batch_sizes": tuple(sizes) if sizes is not None else None})


# How each option is named in messages: the command line's flag, or the Python keyword.
_FLAGS = {"noise_batch": "--batch-size", "check_batch": "--batch-size", "noise_snapshots": "--snapshots"}
_KEYWORDS = {"noise_batch": "batch_size", "check_batch": "batch_size", "noise_snapshots": "snapshots"}


def flag_name(option: str) -> str:
    return _FLAGS.get(option, "--" + option.replace("_", "-"))


def keyword_name(option: str) -> str:
    return _KEYWORDS.get(option, option)


def make_settings(memory: str | int | None = None, margin: float = 0.1, base_batch: int | None = None,
                  base_lr: float | None = None, noise_warmup_steps: int = 10, noise_batch: int | None = None,
                  noise_snapshots: int = 16, noise_budget: str | int | float = "30s", lr_sweep: bool = True,
                  target_loss: float | None = None, batch_sizes: str | list[int] | None = None,
                  max_step_seconds: float = 1.0, seed: int = 0, profile: str | dict | None = None,
                  step_timeout: float = DEFAULT_STEP_TIMEOUT, collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT,
                  plan_gpus: int | None = None, check_batch: int | None = None, min_max_batch: int | None = None,
                  shard: int | None = None, zero_stage: int = 3, attention: str | None = None,
                  shard_wrap: str = "layers",
                  named: Callable[[str], str] = flag_name) -> Settings:
    """The options, checked: each problem is a BadInput naming the option (as `named` spells it), the value
    and what is expected. `memory`: bytes, or a size as text ("512MiB"); `noise_budget`: "30s", "400steps",
    or a number of seconds; `batch_sizes`: "8,16,64" or a list; `profile`: a name, a path or a loaded one."""
    _check_numbers(named, margin=margin, base_batch=base_batch, base_lr=base_lr, noise_warmup_steps=noise_warmup_steps,
                   noise_batch=noise_batch, noise_snapshots=noise_snapshots, max_step_seconds=max_step_seconds,
                   step_timeout=step_timeout, collective_timeout=collective_timeout, plan_gpus=plan_gpus,
                   target_loss=target_loss, seed=seed, check_batch=check_batch, min_max_batch=min_max_batch)
    if plan_gpus is not None and profile is None:
        raise BadInput(f"{named('plan_gpus')} needs {named('profile')}: the interconnect's bandwidth and latency "
                       "come from it")
    _check_shard(named, shard, zero_stage, attention, profile, shard_wrap)
    return Settings(
        memory_bytes=_memory_bytes(named, memory), margin=margin, base_batch=base_batch, base_lr=base_lr,
        noise_warmup_steps=noise_warmup_steps, noise_batch=noise_batch, noise_snapshots=noise_snapshots,
        noise_budget=_noise_budget(named, noise_budget), lr_sweep=lr_sweep, target_loss=target_loss,
        batch_sizes=_batch_list(named, batch_sizes) if batch_sizes is not None else None,
        max_step_seconds=max_step_seconds, seed=seed, step_timeout=step_timeout, profile=_profile(profile),
        collective_timeout=collective_timeout, plan_gpus=plan_gpus, shard=shard, zero_stage=zero_stage,
        shard_wrap=shard_wrap,
        attention=attention)


def _check_numbers(named: Callable[[str], str], **values) -> None:
    """Every number bounded: batches, counts, fractions and rates, seconds."""
    _check_batches(named, values)
    _check_counts(named, values)
    _check_fractions_and_rates(named, values)
    _check_seconds(named, values)


def _check_batches(named: Callable[[str], str], values: dict) -> None:
    for option in ("base_batch", "noise_batch", "check_batch", "min_max_batch"):
        value = values[option]
        if value is not None and not (_is_int(value) and 1 <= value <= MAX_BATCH):
            raise BadInput(f"{named(option)} must be a positive integer of at most {MAX_BATCH:.0e} examples, "
                           f"got {_shown(value)}")
    if values["noise_batch"] is not None and values["noise_batch"] < 2:
        raise BadInput(f"{named('noise_batch')} must be at least 2 (the noise scale compares micro-batches), "
                       f"got {values['noise_batch']}")


def _check_counts(named: Callable[[str], str], values: dict) -> None:
    snapshots, warmup = values["noise_snapshots"], values["noise_warmup_steps"]
    if not (_is_int(snapshots) and MIN_SNAPSHOTS <= snapshots <= MAX_STEPS):
        raise BadInput(f"{named('noise_snapshots')} must be an integer from {MIN_SNAPSHOTS} (what the bootstrap "
                       f"interval needs) to {MAX_STEPS}, got {_shown(snapshots)}")
    if not (_is_int(warmup) and 0 <= warmup <= MAX_STEPS):
        raise BadInput(f"{named('noise_warmup_steps')} must be an integer from 0 to {MAX_STEPS}, got {_shown(warmup)}")
    plan_gpus, seed = values["plan_gpus"], values["seed"]
    if plan_gpus is not None and not (_is_int(plan_gpus) and 1 <= plan_gpus <= MAX_PLAN_GPUS):
        raise BadInput(f"{named('plan_gpus')} must be a positive integer of at most {MAX_PLAN_GPUS}, "
                       f"got {_shown(plan_gpus)}")
    if not (_is_int(seed) and 0 <= seed < 2**63):  # the ranks seed with seed + 1 + rank, a 64-bit seed too
        raise BadInput(f"{named('seed')} must be an integer in [0, 2**63), got {_shown(seed)}")


def _check_fractions_and_rates(named: Callable[[str], str], values: dict) -> None:
    margin, base_lr, target = values["margin"], values["base_lr"], values["target_loss"]
    if not (_is_number(margin) and 0 <= margin < 1):  # false for NaN too
        raise BadInput(f"{named('margin')} must be a fraction in [0, 1), got {margin}")
    if base_lr is not None and not (_is_number(base_lr) and math.isfinite(base_lr) and 0 < base_lr <= MAX_BASE_LR):
        raise BadInput(f"{named('base_lr')} must be a positive number of at most {MAX_BASE_LR:g}, got {base_lr}")
    if target is not None and not (_is_number(target) and math.isfinite(target)):
        raise BadInput(f"{named('target_loss')} must be a finite number, got {target}")


def _check_seconds(named: Callable[[str], str], values: dict) -> None:
    step_limit = values["max_step_seconds"]
    if not (_is_number(step_limit) and math.isfinite(step_limit) and step_limit > 0):
        raise BadInput(f"{named('max_step_seconds')} must be a positive number of seconds, got {step_limit}")
    for option in ("step_timeout", "collective_timeout"):
        value = values[option]
        if not (_is_number(value) and math.isfinite(value) and 0 < value <= MAX_SECONDS):
            raise BadInput(f"{named(option)} must be a positive number of seconds of at most {MAX_SECONDS:g}, "
                           f"got {value}")


def _check_shard(named: Callable[[str], str], shard: int | None, zero_stage: int, attention: str | None,
                 profile, shard_wrap: str) -> None:
    """shard: 2 to 4096 GPUs, with a profile (the GPUs it shards over); zero_stage 1 to 3 and shard_wrap one of
    WRAPS (stages 2 and 3), with shard; attention: a kernel's name."""
    from advisor.memory.attention import BACKENDS
    from advisor.memory.shard import MAX_SHARD, WRAPS

    if shard is not None:
        if not (_is_int(shard) and 2 <= shard <= MAX_SHARD):
            raise BadInput(f"{named('shard')} must be a number of GPUs from 2 to {MAX_SHARD}, got {_shown(shard)}")
        if profile is None:
            raise BadInput(f"{named('shard')} needs {named('profile')}: it traces one GPU of N as the profiled "
                           "device runs it")
    if not (_is_int(zero_stage) and zero_stage in (1, 2, 3)):
        raise BadInput(f"{named('zero_stage')} must be 1 (optimizer state sharded), 2 (gradients too) or 3 "
                       f"(parameters too), got {_shown(zero_stage)}")
    if zero_stage != 3 and shard is None:
        raise BadInput(f"{named('zero_stage')} needs {named('shard')}: it says how the N GPUs shard the step")
    if shard_wrap not in WRAPS:
        raise BadInput(f"{named('shard_wrap')} {str(shard_wrap)[:40]!r}: expected one of {', '.join(WRAPS)}")
    if shard_wrap != "layers" and shard is None:
        raise BadInput(f"{named('shard_wrap')} needs {named('shard')}: it says how FSDP wraps the N GPUs' model")
    if shard_wrap != "layers" and zero_stage == 1:
        raise BadInput(f"{named('shard_wrap')} needs {named('zero_stage')} 2 or 3: ZeRO-1 shards no parameters, "
                       "so FSDP wraps nothing")
    if attention is not None:
        if attention not in BACKENDS:
            raise BadInput(f"{named('attention')} {str(attention)[:40]!r}: expected one of {', '.join(BACKENDS)}")
        if profile is None:
            raise BadInput(f"{named('attention')} needs {named('profile')}: it names the kernel the profiled GPU runs")


def check_run_mode(isolate: bool, nproc_per_node: int | None, device: str, in_job: bool, shard: int | None) -> None:
    """How the command line runs the probes: in this process, a child (--isolate) or N ranks."""
    from advisor.devices import rank_limit

    if nproc_per_node is not None and not in_job:
        if not _is_int(nproc_per_node) or nproc_per_node < 1:
            raise BadInput(f"--nproc-per-node must be a positive integer, got {_shown(nproc_per_node)}")
        limit, plural, singular = rank_limit(device)
        if limit >= 1 and nproc_per_node > limit:
            raise BadInput(f"--nproc-per-node {_shown(nproc_per_node)}: this machine has {limit} {plural}; "
                           f"at most one rank per {singular}")
        if shard is not None:
            raise BadInput("--shard and --nproc-per-node do not combine: --shard traces one rank of N in this process")
        if isolate:
            raise BadInput("--isolate and --nproc-per-node do not combine: the ranks are child processes already")
    if in_job:
        if isolate:
            raise BadInput("--isolate does not combine with a distributed job")
        if shard:
            raise BadInput("--shard does not combine with a distributed job: it traces one rank of N in one process")


def _memory_bytes(named: Callable[[str], str], memory: str | int | None) -> int | None:
    from advisor.units import parse_size

    if memory is None:
        return None
    if _is_int(memory):
        if memory < 1:
            raise BadInput(f"{named('memory')}: size {memory} must be at least one byte")
        return memory
    try:
        return parse_size(memory)
    except BadInput as exc:
        raise BadInput(f"{named('memory')}: {exc}") from None


def _profile(profile: str | dict | None) -> dict | None:
    from advisor.hardware.profiles import load, validate

    if profile is None or isinstance(profile, dict) and "name" in profile and "source" in profile:
        return profile
    if isinstance(profile, dict):
        return validate(profile, "the profile given")
    return load(profile)


def _noise_budget(named: Callable[[str], str], budget: str | int | float) -> NoiseBudget:
    """'30s', '30' or 30 (seconds), or '400steps' -> a NoiseBudget."""
    value = str(budget).strip().lower() if not isinstance(budget, bool) else ""
    unit = "steps" if value.endswith("steps") else "s"
    number = value[:-len(unit)] if value.endswith(unit) else value
    try:
        amount = float(number) if unit == "s" else int(number)
    except ValueError:
        amount = None
    if amount is None or not math.isfinite(amount) or amount <= 0 or amount > MAX_NOISE_BUDGET:
        text = str(budget)
        shown = repr(text) if len(text) <= 40 else repr(text[:37]) + "..."
        raise BadInput(f"{named('noise_budget')} {shown}: expected seconds (30s) or training steps (400steps), "
                       "positive")
    return NoiseBudget(seconds=amount) if unit == "s" else NoiseBudget(seconds=None, steps=amount)


def _batch_list(named: Callable[[str], str], given: str | list[int]) -> tuple[int, ...]:
    """'8,16,64' or [8, 16, 64] -> (8, 16, 64): positive integers (in text: separated by commas, spaces and a
    trailing comma allowed)."""
    text = given if isinstance(given, str) else ",".join(str(b) for b in given)
    shown = repr(text) if len(text) <= 60 else repr(text[:57]) + "..."
    expected = "expected comma-separated positive integers like 8,16,64"
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise BadInput(f"{named('batch_sizes')} {shown}: no batch size given; {expected}")
    for part in parts:
        if not (part.isascii() and part.isdigit()):
            raise BadInput(f"{named('batch_sizes')} {shown}: {part[:20]!r} is not a positive integer; {expected}")
        if len(part) > 18 or int(part) > MAX_BATCH:
            raise BadInput(f"{named('batch_sizes')} {shown}: {part[:20]!r} is far too large a batch "
                           f"(at most {MAX_BATCH:.0e})")
    sizes = tuple(int(part) for part in parts)
    if min(sizes) < 1:
        raise BadInput(f"{named('batch_sizes')} {shown}: batch sizes must be at least 1; {expected}")
    return sizes


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value) -> str:
    """A value as a message shows it: 10**30 is not printed digit by digit."""
    text = str(value)
    return text if len(text) <= 20 else f"{text[:6]}... ({len(text)} digits)"
