"""The gradient noise probe: micro-batch gradients at fixed weights, over several weight snapshots.

After `warmup_steps` ordinary training steps (the noise at initialisation is atypical), each snapshot
draws B = k·b examples, takes the k micro-batch gradients without moving the weights, records s̄ and
S, then trains one step on their mean so the next snapshot sees new weights. For Adam-family
optimizers the gradients are preconditioned (divided by √v̂ + ε) when v̂ exists after the warm-up,
since that is the geometry the optimizer steps in; with no warm-up every snapshot stays raw.

In a data-parallel job (McCandlish et al., appendix A) the k micro-batches are shared out: each of
the n ranks takes k/n of them on its own examples, and s̄ (the mean of the k ‖gᵢ‖²) and S (the norm
of the mean of all k gᵢ) are sums over ranks: the same estimator, each rank's gradients the small
batch, their all-reduced mean the big one. The warm-up is the same on every rank (same seed), so
the weights agree without communication; the snapshot steps use the all-reduced gradient.
"""

import math
import time
from dataclasses import dataclass

import torch

from advisor import distributed
from advisor.device import Backend
from advisor.errors import ProbeFailed
from advisor.noise_scale import NoiseScale, noise_scale, two_batch_estimates
from advisor.spec import ModelSpec
from advisor.step import move_batch, split_batch, train_step


@dataclass(frozen=True)
class NoiseResult:
    scale: NoiseScale
    batch_size: int
    micro_batch: int
    warmup_steps: int
    preconditioned: bool
    method: str
    seconds: float


def measure_noise(spec: ModelSpec, backend: Backend, batch_size: int, micro_batches: int = 8,
                  snapshots: int = 12, warmup_steps: int = 10, warmup_batch: int = 32, seed: int = 0,
                  progress=lambda done, total: None) -> NoiseResult:
    started = time.perf_counter()
    micro = batch_size // micro_batches
    if micro < 1:
        raise ProbeFailed(f"the noise probe needs a batch of at least {micro_batches} examples, got {batch_size}")
    ranks = distributed.world()
    local = -(-micro_batches // ranks)  # this rank's micro-batches per snapshot
    micro_batches = local * ranks
    big = micro * micro_batches
    torch.manual_seed(seed)
    model = spec.model().to(backend.device)
    opt = spec.optimizer(model)
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(warmup_steps):
        loss = train_step(model, opt, spec.loss, move_batch(spec.batch(warmup_batch), backend.device))
        _check_finite(loss.item(), f"loss at warm-up step {step + 1} of the noise probe")
    # One geometry for every snapshot: preconditioned only if v̂ already exists at the first one.
    preconditioned = any(_adam_preconditioner(opt, p) is not None for p in params)
    if distributed.active():
        torch.manual_seed(seed + 1 + distributed.rank())  # each rank its own examples
    results = []
    for snap in range(snapshots):
        scales = [_adam_preconditioner(opt, p) if preconditioned else None for p in params]
        raw_sum, pre_sum, small_sq = _micro_batch_gradients(spec, model, params, scales, backend,
                                                            spec.batch(local * micro), micro, snap)
        if distributed.active():
            small_sq_t = torch.tensor([small_sq], dtype=torch.float64, device=backend.device)
            distributed.sum_tensors(raw_sum + pre_sum + [small_sq_t], f"the noise probe's all-reduce at snapshot "
                                                                     f"{snap + 1}")
            small_sq = small_sq_t.item()
        big_sq = sum((pre / micro_batches).pow(2).sum().item() for pre in pre_sum)
        results.append(two_batch_estimates(small_sq / micro_batches, big_sq, micro, big))
        for p, g in zip(params, raw_sum):  # one training step on the big batch's gradient
            p.grad = g / micro_batches
        opt.step()
        opt.zero_grad(set_to_none=True)
        progress(snap + 1, snapshots)
    method = f"{backend.measured_on}: {snapshots} snapshots of {micro_batches} micro-batches of {micro}"
    if distributed.active():
        method += (f", {local} on each of {ranks} ranks (data parallel: local gradients the small batch, "
                   "their all-reduced mean the big one)")
    return NoiseResult(noise_scale(results, seed=seed), big, micro, warmup_steps, preconditioned, method,
                       time.perf_counter() - started)


def _micro_batch_gradients(spec, model, params, scales, backend, batch, micro, snap):
    """Σ raw gᵢ (for the training step), Σ gᵢ and Σ ‖gᵢ‖² (preconditioned where scaled)."""
    raw_sum = [torch.zeros_like(p) for p in params]
    pre_sum = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    small_sq = 0.0
    chunks = split_batch(move_batch(batch, backend.device), micro)
    for i, chunk in enumerate(chunks):
        model.zero_grad(set_to_none=True)
        loss = spec.loss(model, chunk)
        loss.backward()
        _check_finite(loss.item(), f"loss at noise snapshot {snap + 1}, micro-batch {i + 1}")
        sq = 0.0
        for p, scale, acc, pre in zip(params, scales, raw_sum, pre_sum):
            if p.grad is None:
                continue
            acc.add_(p.grad)
            g = p.grad.double() if scale is None else p.grad.double() / scale
            pre.add_(g)
            sq += g.pow(2).sum().item()
        _check_finite(sq, f"gradient at noise snapshot {snap + 1}, micro-batch {i + 1}")
        small_sq += sq
    model.zero_grad(set_to_none=True)
    return raw_sum, pre_sum, small_sq


def _adam_preconditioner(opt: torch.optim.Optimizer, p: torch.Tensor) -> torch.Tensor | None:
    """√v̂ + ε for an Adam-family parameter with second-moment state, else None (raw gradients)."""
    state = opt.state.get(p, {})
    v, step = state.get("exp_avg_sq"), state.get("step")
    if v is None or step is None or float(step) == 0:
        return None
    group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
    beta2, eps = group["betas"][1], group["eps"]
    return (v.double() / (1 - beta2 ** float(step))).sqrt() + eps


def _check_finite(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise ProbeFailed(f"non-finite {what} ({value}): the probe cannot measure a diverging run")
