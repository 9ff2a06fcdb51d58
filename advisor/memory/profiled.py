"""The peak of a training step on a profiled device (a GPU this machine does not have), traced here.

`check`, and `max-batch` / `recommend` with `--profile`, ask how a step runs on another device. Nothing
the size of the model may be allocated for that: `model()`, the optimizer and the contract check run under
FakeTensorMode (StepTracer's build_fake), so a check of an 8-billion-parameter model holds a few hundred
megabytes. The step is traced as the device runs it:

- attention through the kernel that GPU picks (advisor/memory/attention.py);
- the optimizer's foreach implementation where the file leaves `foreach` unset, as torch picks on CUDA
  (torch.optim.optimizer._default_to_fused_or_foreach; on the CPU it loops tensor by tensor);
- with `shard`, one rank of N (advisor/memory/shard.py): under FSDP2, ZeRO-3 (full sharding) or ZeRO-2
  (`zero_stage=2`: each layer's parameters stay gathered from its forward to its backward); under torch's
  ZeroRedundancyOptimizer, ZeRO-1 (`zero_stage=1`: the optimizer state alone), with DDP's gradient
  buckets, which cannot run under FakeTensorMode, a term of their own;
- the CUDA terms the trace cannot see: the allocator's rounding, the cuBLAS workspace, NCCL's buffers
  (advisor/memory/cuda_overheads.py).

Where a real CPU step at a small batch is affordable, the contract check runs for real and the fake trace
is held to real steps (advisor/memory/fidelity.py). Where the model cannot be built under FakeTensorMode,
a note says so and it is built for real as before, unless its parameters alone would not fit this host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from advisor.errors import BadInput, ProbeFailed
from advisor.memory import shard as sharding
from advisor.memory.attention import BACKENDS, GpuAttention
from advisor.memory.cuda_overheads import Term, budget_terms, device_terms
from advisor.memory.fidelity import Fidelity, hold_to_real_steps
from advisor.memory.library_shims import as_real_construction
from advisor.memory.trace import StepTracer
from advisor.hardware.host import host_available_bytes
from advisor.hardware.profiles import compute_capability
from advisor.spec import ModelSpec, check_contract, one_line
from advisor.step import gradient_bytes
from advisor.units import format_bytes


# What `zero_stage` shards over the N GPUs, as the method and the arithmetic fallback say it
_STAGES = {3: "full sharding as ZeRO-3", 2: "gradients and optimizer state sharded, parameters gathered from each "
           "layer's forward to its backward, as ZeRO-2 / SHARD_GRAD_OP (reshard_after_forward=False)",
           1: "optimizer state sharded, parameters and gradients whole, as ZeRO-1"}
_SHARDED = {3: "parameter, gradient and optimizer-state", 2: "gradient and optimizer-state", 1: "optimizer-state"}

@dataclass
class ProfiledStep:
    """`peak(batch)`: the step's estimated peak on the profiled device; `terms(batch)`: what it is made of."""

    tracer: StepTracer
    profile: dict
    smallest: int
    fidelity: Fidelity
    attention: GpuAttention | None
    shard: int | None
    shard_method: str | None
    notes: list[str] = field(default_factory=list)
    zero_stage: int = 3
    fake = True
    _terms: dict[int, list[Term]] = field(default_factory=dict)

    def peak(self, batch: int) -> int:
        return sum(t.bytes for t in self.terms(batch))

    def terms(self, batch: int) -> list[Term]:
        if batch not in self._terms:
            traced = self.tracer.peak(batch)
            rounded = self.tracer.peak_rounded
            found = [Term("traced_step", traced, self.method)]
            if self.profile.get("device_type") == "cuda":
                found.append(Term("allocator_rounding", rounded - traced, "estimated: every traced allocation "
                                  "rounded up to 512 bytes, as CUDA's caching allocator does"))
            if self.shard and self.shard_method and "arithmetically" in self.shard_method:
                sharded = model_state_bytes(self.tracer, stage=self.zero_stage)
                found.append(Term("sharded_model_states", -round(sharded * (1 - 1 / self.shard)),
                                  f"estimated arithmetically: (N-1)/N of the {_SHARDED[self.zero_stage]} bytes, "
                                  f"N = {self.shard}; the gathered layers and NCCL's buffers beside them"))
            gap = self.fidelity.gap(batch)
            if gap:
                found.append(Term("fidelity_correction", gap, "measured: real CPU steps held more than the fake "
                                  f"trace ({self.fidelity.describe()}); fitted as a line in the batch size"))
            if self.shard and self.zero_stage == 1:
                found.append(Term("ddp_gradient_buckets", gradient_bytes(self.tracer.model), "estimated: DDP's "
                                  "all-reduce buckets, a copy of every gradient (torch's DistributedDataParallel "
                                  "docs: gradient_as_bucket_view=True saves the total gradients' size, then this "
                                  "term is 0); DDP cannot run under FakeTensorMode"))
            self._terms[batch] = found + device_terms(self.profile, self.shard)
        return self._terms[batch]

    @property
    def method(self) -> str:
        how = "tracked: live tensor bytes of a steady-state step traced under FakeTensorMode on the CPU"
        if self.tracer.built_fake:
            how += " (model and optimizer built fake)"
        if self.attention is not None and self.attention.used:
            how += f"; attention as {self.profile['name']} runs it: {self.attention.describe()}"
        if self.shard_method:
            how += f"; {self.shard_method}"
        return how

    def budget_terms(self) -> list[Term]:
        return budget_terms(self.profile)


def trace_for_profile(spec: ModelSpec, profile: dict, seed: int = 0, shard: int | None = None,
                      attention: str | None = None, zero_stage: int = 3, shard_wrap: str = "layers") -> ProfiledStep:
    cuda = profile.get("device_type") == "cuda"
    backend = attention or profile.get("attention_backend") or "auto"
    if backend not in BACKENDS:
        raise BadInput(f"--attention {backend!r}: expected one of {', '.join(BACKENDS)}")
    gpu_attention = GpuAttention(backend, compute_capability(profile)) if cuda else None
    notes: list[str] = []
    prepare, configure, shard_method = _sharded_as(shard, zero_stage, shard_wrap, cuda)
    build = dict(seed=seed, batch_on_host=False, prepare=prepare, configure=configure,
                 around_step=(lambda: _fresh(gpu_attention)) if gpu_attention else None)
    traced_sharded = bool(shard)  # False where torch could not shard it and the estimate is arithmetic
    try:
        tracer, smallest, built_fake = _fake_built(spec, build, notes, sharded=traced_sharded)
    except (BadInput, MemoryError):
        raise
    except Exception as exc:  # torch could not shard or step this model: the unsharded trace, less the shards
        if not shard:
            raise
        how = "ZeroRedundancyOptimizer" if zero_stage == 1 else "FSDP2"
        notes.append(f"{how} could not trace this model sharded ({type(exc).__name__}: {one_line(exc, 160)}): "
                     "the peak on one GPU is an arithmetic estimate, the unsharded trace less (N-1)/N of the "
                     f"{_SHARDED[zero_stage]} bytes")
        build.update(prepare=None, configure=as_on_cuda if cuda else None)
        traced_sharded = False
        tracer, smallest, built_fake = _fake_built(spec, build, notes)
        shard_method = f"one rank of {shard} ({_STAGES[zero_stage]}): estimated arithmetically from the unsharded trace"
    # where affordable, the thorough contract check too: finite loss, gradients that are not all zero. The
    # tracer itself is compared where it ran the CPU's own kernels (no GPU attention); sharded, real tensors
    # step through the same fake process group
    same_kernels = not (gpu_attention is not None and gpu_attention.used)
    sharded = traced_sharded and same_kernels  # real steps through the sharded set-up: the model is built whole
    fidelity, smallest = hold_to_real_steps(
        spec, seed, smallest, built_fake, contract=lambda: check_contract(spec),
        fake=tracer if same_kernels else None, configure=build["configure"] if same_kernels else None,
        prepare=build["prepare"] if same_kernels else None, sharded=sharded,
        built_bytes=_whole_bytes(tracer.model) if sharded else 0)
    notes += _fidelity_notes(fidelity)
    if tracer.tracker.stand_ins:
        notes.append("the step reads values from tensors (.item(): an optimizer's step count?), which a fake trace "
                     "does not have: 1 stood in for each")
    step = ProfiledStep(tracer, profile, smallest, fidelity, gpu_attention, shard, shard_method, notes, zero_stage)
    if gpu_attention is not None and gpu_attention.used:
        notes.append(f"attention traced as {profile['name']} would run it: {gpu_attention.describe()} "
                     f"({'--attention or the profile' if backend != 'auto' else 'chosen by compute capability, dtype and head size'})")
    return step


def _fidelity_notes(fidelity: Fidelity) -> list[str]:
    """What the comparison with real CPU steps found, or why there was none."""
    if fidelity.checked:
        if not fidelity.exact and any(real > fake for fake, real in fidelity.points.values()):
            return [f"the fake trace held less than real CPU steps ({fidelity.describe()}): every traced peak is "
                    "corrected by the gap, fitted as a line in the batch size (a term of its own)"]
        return []
    if fidelity.contract_ran:
        return [f"the contract check ran real CPU steps, but the sharded trace was not compared with them: "
                f"{fidelity.skipped}"]
    return [f"model(), the optimizer and the contract check ran under FakeTensorMode (nothing the size of the model "
            f"was allocated here); not compared with real CPU steps: {fidelity.skipped}, so the loss's finiteness "
            "and its gradients' values are unchecked"]


def _sharded_as(shard: int | None, zero_stage: int, shard_wrap: str, cuda: bool):
    """(prepare, configure, method) for StepTracer: one rank of `shard` as ZeRO `zero_stage` runs it, the
    optimizer as the device runs it."""
    device = as_on_cuda if cuda else None
    if not shard:
        return None, device, None
    if zero_stage == 1:
        zero = sharding.optimizer_sharded(shard)
        return None, (lambda opt: zero(as_on_cuda(opt))) if cuda else zero, (
            f"one rank of {shard} under torch's ZeroRedundancyOptimizer ({_STAGES[1]}; the rank whose "
            "partition holds the most parameter bytes) on a fake process group")
    prepare = sharding.fully_sharded(shard, reshard_after_forward=zero_stage == 3, wrap=shard_wrap)
    return prepare, device, (f"one rank of {shard} under FSDP2 (fully_shard, {_STAGES[zero_stage]}; units: "
                             f"{sharding.WRAP_SAYS[shard_wrap]}) on a fake process group")


def _fake_built(spec: ModelSpec, build: dict, notes: list[str], fallback: bool = True,
                sharded: bool = False) -> tuple[StepTracer, int, bool]:
    """The tracer with model() and the optimizer built under FakeTensorMode, and the smallest batch that trains
    (2 where batch 1 cannot: BatchNorm). Where the model cannot be built or stepped that way, the note says
    so and it is built for real, as before, unless its parameters alone would not fit this host."""
    try:
        tracer = StepTracer(spec, fake=True, smallest=2, build_fake=True, **build)
    except (BadInput, MemoryError):
        raise
    except Exception as exc:  # a ProbeFailed from the trace, or the user's model() failing under the fake mode
        if sharded:
            raise  # sharding failed: the caller estimates the shards instead
        if not fallback:
            raise ProbeFailed(f"{spec.path}: not traceable with the model built under FakeTensorMode: "
                              f"{one_line(exc)}") from None
        too_big = _parameter_bytes(spec)
        if too_big is not None and too_big > host_available_bytes() // 2:
            raise ProbeFailed(f"{spec.path}: the step could not be traced with the model built under "
                              f"FakeTensorMode ({one_line(exc)}), and building it for real needs "
                              f"{format_bytes(too_big)} of parameters, more than this host can spare") from None
        notes.append(f"model() could not be built and stepped under FakeTensorMode ({type(exc).__name__}: "
                     f"{one_line(exc, 160)}): it was built for real on this host, as before")
        smallest = check_contract(spec)
        return StepTracer(spec, fake=True, smallest=smallest, **build), smallest, False
    if tracer.trained_without_gradient():
        raise spec.fail("the loss at batch 2 gives no gradient to any parameter the optimizer trains: it does not "
                        "depend on the model (a leaf tensor, or a value cut off from model's output?)")
    try:
        tracer.peak(1)
        return tracer, 1, True
    except (ProbeFailed, BadInput):
        return tracer, 2, True


def guard_host_budget(spec: ModelSpec, budget) -> None:
    """Before a model is built for real on the host: where its parameters alone (counted on a twin built under
    FakeTensorMode, which costs nothing) exceed `budget`, nothing fits, and that is said before the host
    spends the memory; with the step's own need, traced fake, where the trace can run."""
    weights = _parameter_bytes(spec)
    if weights is None or weights <= budget.bytes:
        return
    what, needed = "the model's parameters and buffers alone need", weights
    try:
        tracer, smallest, _ = _fake_built(spec, dict(batch_on_host=True), [], fallback=False)
        what, needed = f"a step at batch {smallest} needs", tracer.peak(smallest)
    except (BadInput, ProbeFailed):
        pass
    raise BadInput(f"{spec.path}: nothing fits: {what} {format_bytes(needed)} ({needed} bytes) but the budget is "
                   f"{format_bytes(budget.bytes)} ({budget.source}); traced with the model built under "
                   "FakeTensorMode: nothing was built for real")


def _parameter_bytes(spec: ModelSpec) -> int | None:
    """The model's parameter and buffer bytes, built under a FakeTensorMode of its own; None if it cannot be."""
    try:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        with mode, as_real_construction(mode):
            model = spec.model()
        return _whole_bytes(model)
    except Exception:  # noqa: BLE001 -- then nothing is known about its size
        return None


def _whole_bytes(model: torch.nn.Module) -> int:
    """The bytes of the model's parameters and buffers, whole (a sharded parameter counts at its full size)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def model_state_bytes(tracer: StepTracer, stage: int = 3) -> int:
    """What ZeRO `stage` shards, as the trace holds it: the optimizer's state (1), the trained parameters'
    gradients too (2), and the parameters themselves (3)."""
    from advisor.memory.trace import optimizer_state

    states = sum(t.numel() * t.element_size() for t in optimizer_state(tracer.opt))
    params = sum(p.numel() * p.element_size() for p in tracer.model.parameters())
    return states + (gradient_bytes(tracer.model) if stage >= 2 else 0) + (params if stage == 3 else 0)


def as_on_cuda(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer as torch runs it on CUDA: the foreach implementation where the file leaves foreach unset."""
    for group in opt.param_groups:
        if "foreach" in group and group["foreach"] is None and not group.get("fused") \
                and not group.get("differentiable"):
            group["foreach"] = True
    return opt


class _fresh:
    """Enter the attention mode for one step, its counts reset (so they describe one step)."""

    def __init__(self, mode: GpuAttention):
        self.mode = mode

    def __enter__(self):
        self.mode.used.clear()
        return self.mode.__enter__()

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)
