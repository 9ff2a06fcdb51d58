"""The Python API: the advice from training code, the same as the command line gives (which is built on it).

    import advisor
    report = advisor.recommend(make_model, draw_batch, device="cpu", noise_budget="40steps")
    report.batch_size, report.learning_rate, report.to_dict()   # to_dict(): what `--json` prints

`model` and `batch` are as in a model file (`model()` builds a fresh model, `batch(size)` draws `size`
examples), or a module instance and a DataLoader (or any iterable of batches): see advisor/inputs.py. A
model file works too: `advisor.recommend(advisor.load("model.py"))`, or its path.

Every option is the command-line flag of the same name (`memory="12GB"` is `--memory 12GB`), checked the
same way. A failure is an exception of advisor.errors (BadInput, DeviceUnavailable, ProbeFailed; a call
past `step_timeout` is a StepTimeout, a ProbeFailed); the process is never ended. Nothing of the
interpreter's state changes across a call: torch's random generators and thread count, sys.path and
sys.modules are as they were.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from advisor import distributed, watchdog
from advisor.capacity import CapacityCheck, check_capacity
from advisor.devices import Backend, resolve_device, resolve_rank_device
from advisor.errors import BadInput
from advisor.inputs import spec_from
from advisor.memory.trace import release_trace_caches
from advisor.pipeline import PROBE_SECTIONS, Advisor, no_progress
from advisor.results import Report
from advisor.settings import Settings, keyword_name, make_settings
from advisor.spec import ModelSpec, load_spec
from advisor.watchdog import DEFAULT_COLLECTIVE_TIMEOUT, DEFAULT_STEP_TIMEOUT

# The probes whose figures are times (or are budgeted in seconds): they run with fewer CPU threads beside load.
# The largest batch is traced, not timed: it keeps the caller's threads and says nothing of the load.
TIMED_PROBES = ("throughput", "noise", "recommendation")

Model = Any  # a function that builds the model, a torch.nn.Module, a loaded model file (load()) or its path
Batch = Any  # a function of the batch size, a DataLoader, or an iterable of batches; None for a model file


def load(path: str | os.PathLike, *, step_timeout: float = DEFAULT_STEP_TIMEOUT) -> ModelSpec:
    """A model file, imported and its contract's names read (no __pycache__ beside it; sys.path and
    sys.modules as they were afterwards). The probes check the contract itself when they run."""
    with watchdog.watching(step_timeout):
        return load_spec(path)


def recommend(model: Model, batch: Batch = None, *, loss: Callable | None = None, optimizer: Any = None,
              autocast: Any = None, device: str | Backend = "auto", memory: str | int | None = None,
              profile: str | dict | None = None, margin: float = 0.1, base_batch: int | None = None,
              base_lr: float | None = None, noise_warmup_steps: int = 10, noise_budget: str | float = "30s",
              lr_sweep: bool = True, target_loss: float | None = None, max_step_seconds: float = 1.0,
              seed: int = 0, step_timeout: float = DEFAULT_STEP_TIMEOUT,
              collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT, plan_gpus: int | None = None,
              shard: int | None = None, zero_stage: int = 3, attention: str | None = None,
              shard_wrap: str = "layers", progress=None) -> Report:
    """The whole advice: largest batch, throughput, gradient noise, batch size and learning rate."""
    settings = make_settings(memory=memory, margin=margin, profile=profile, shard=shard, zero_stage=zero_stage,
                             shard_wrap=shard_wrap, attention=attention, base_batch=base_batch, base_lr=base_lr,
                             noise_warmup_steps=noise_warmup_steps,
                             noise_budget=noise_budget, lr_sweep=lr_sweep, target_loss=target_loss,
                             max_step_seconds=max_step_seconds, seed=seed, step_timeout=step_timeout,
                             collective_timeout=collective_timeout, plan_gpus=plan_gpus, named=keyword_name)
    return run(_model(model, batch, loss, optimizer, autocast), settings, "recommendation", device, progress)


def max_batch(model: Model, batch: Batch = None, *, loss: Callable | None = None, optimizer: Any = None,
              autocast: Any = None, device: str | Backend = "auto", memory: str | int | None = None,
              profile: str | dict | None = None, margin: float = 0.1, shard: int | None = None,
              zero_stage: int = 3, attention: str | None = None, shard_wrap: str = "layers", seed: int = 0,
              step_timeout: float = DEFAULT_STEP_TIMEOUT, progress=None) -> Report:
    """The largest batch whose steady-state training step fits the memory budget (`report.memory`)."""
    settings = make_settings(memory=memory, margin=margin, profile=profile, shard=shard, zero_stage=zero_stage,
                             shard_wrap=shard_wrap, attention=attention, seed=seed, step_timeout=step_timeout,
                             named=keyword_name)
    return run(_model(model, batch, loss, optimizer, autocast), settings, "memory", device, progress)


def noise(model: Model, batch: Batch = None, *, loss: Callable | None = None, optimizer: Any = None,
          autocast: Any = None, device: str | Backend = "auto", batch_size: int | None = None,
          snapshots: int = 16, noise_warmup_steps: int = 10, noise_budget: str | float = "30s",
          base_batch: int | None = None, memory: str | int | None = None, seed: int = 0,
          step_timeout: float = DEFAULT_STEP_TIMEOUT, collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT,
          progress=None) -> Report:
    """The gradient noise scale B_simple (McCandlish et al. 2018) with a 95% interval (`report.noise`)."""
    settings = make_settings(noise_batch=batch_size, noise_snapshots=snapshots, noise_warmup_steps=noise_warmup_steps,
                             noise_budget=noise_budget, base_batch=base_batch, memory=memory, seed=seed,
                             step_timeout=step_timeout, collective_timeout=collective_timeout, named=keyword_name)
    return run(_model(model, batch, loss, optimizer, autocast), settings, "noise", device, progress)


def throughput(model: Model, batch: Batch = None, *, loss: Callable | None = None, optimizer: Any = None,
               autocast: Any = None, device: str | Backend = "auto", batch_sizes: str | list[int] | None = None,
               memory: str | int | None = None, max_step_seconds: float = 1.0, seed: int = 0,
               step_timeout: float = DEFAULT_STEP_TIMEOUT, collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT,
               progress=None) -> Report:
    """Seconds per training step against batch size (`report.throughput`)."""
    settings = make_settings(batch_sizes=batch_sizes, memory=memory, max_step_seconds=max_step_seconds, seed=seed,
                             step_timeout=step_timeout, collective_timeout=collective_timeout, named=keyword_name)
    return run(_model(model, batch, loss, optimizer, autocast), settings, "throughput", device, progress)


def check(model: Model, batch: Batch = None, *, profile: str | dict, batch_size: int, loss: Callable | None = None,
          optimizer: Any = None, autocast: Any = None, margin: float = 0.1, min_max_batch: int | None = None,
          shard: int | None = None, zero_stage: int = 3, attention: str | None = None, shard_wrap: str = "layers",
          seed: int = 0, step_timeout: float = DEFAULT_STEP_TIMEOUT) -> CapacityCheck:
    """The CI capacity check, no GPU needed: does `batch_size` fit the profiled device (`.fits`, `.passed`)?"""
    settings = make_settings(profile=profile, check_batch=batch_size, margin=margin, min_max_batch=min_max_batch,
                             shard=shard, zero_stage=zero_stage, shard_wrap=shard_wrap, attention=attention,
                             seed=seed, step_timeout=step_timeout, named=keyword_name)
    return run_check(_model(model, batch, loss, optimizer, autocast), settings, batch_size, min_max_batch)


def run(model: str | os.PathLike | ModelSpec, settings: Settings, probe: str, device: str | Backend = "auto",
        progress=None) -> Report:
    """One command's work with settings already checked (make_settings): resolve the device, load the model
    file (unless given a ModelSpec), run `probe` ("memory", "throughput", "noise" or "recommendation") and what
    it needs. The command line and its --isolate child call this; the functions above do too."""
    if probe not in PROBE_SECTIONS:
        raise ValueError(f"unknown probe {probe!r}")
    backend = device if isinstance(device, Backend) else (
        resolve_rank_device(device, distributed.local_rank()) if distributed.in_job() else resolve_device(device))
    with watchdog.watching(settings.step_timeout), backend.preserving_rng(), \
            distributed.process_group(backend, settings.collective_timeout), \
            backend.probing_threads(adjustable=not distributed.in_job() and probe in TIMED_PROBES) as note:
        try:
            spec = model if isinstance(model, ModelSpec) else load_spec(model)
            advisor = Advisor(spec, backend, settings, progress or no_progress,
                              contract_first=not (probe == "memory" and settings.profile is not None))
            if note:
                advisor.notes.append(note)
            getattr(advisor, probe)()
            return advisor.finish(PROBE_SECTIONS[probe])
        finally:
            release_trace_caches()


def run_check(model: str | os.PathLike | ModelSpec, settings: Settings, batch_size: int,
              min_max_batch: int | None = None) -> CapacityCheck:
    """The capacity check with settings already checked (the profile, margin, shard, attention and seed)."""
    with watchdog.watching(settings.step_timeout), watchdog.probe("capacity check"):
        spec = model if isinstance(model, ModelSpec) else load_spec(model)
        return check_capacity(spec, settings.profile, batch_size, settings.margin, min_max_batch, settings.seed,
                              shard=settings.shard, zero_stage=settings.zero_stage, attention=settings.attention,
                              shard_wrap=settings.shard_wrap)


def _model(model: Model, batch: Batch, loss, optimizer, autocast) -> str | os.PathLike | ModelSpec:
    """A model file (loaded, or its path) as it is; objects as a ModelSpec."""
    if isinstance(model, (ModelSpec, str, os.PathLike)):
        given = [name for name, value in (("batch", batch), ("loss", loss), ("optimizer", optimizer),
                                          ("autocast", autocast)) if value is not None]
        if given:
            raise BadInput(f"{model if not isinstance(model, ModelSpec) else model.path}: a model file defines its "
                           f"own {', '.join(given)}: pass model and batch as objects instead")
        return Path(model) if isinstance(model, os.PathLike) else model
    return spec_from(model, batch, loss, optimizer, autocast=autocast)
