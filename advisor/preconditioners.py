"""The geometry each optimizer steps in, for the noise scale: the per-coordinate divisor D of its update.

An adaptive optimizer moves a parameter by (roughly) g / D, so the noise that matters to it is the noise
of g / D, not of g (McCandlish et al.'s B_simple assumes SGD). D is the one the optimizer itself would
use at this step: its second-moment state updated with the step's own gradient ḡ, as its update does.
Dividing by the stale state (before ḡ) makes the estimate heavy-tailed wherever that state is near zero
(an embedding row seen for the first time), which is the coordinate the update itself keeps bounded.

`divisor(opt, p, g)` returns D (float64, p's shape) or None where the update is not a per-coordinate
rescaling of the gradient (SGD, momentum) or where no sound divisor is known (sign methods such as
Lion, unknown optimizers): the noise is then measured on raw gradients, and `geometry` says which.
Pure tensor arithmetic on the optimizer's state: nothing here changes the optimizer.
"""

from __future__ import annotations

import torch

# Raw-gradient geometry, and why, by optimizer family.
SGD_FAMILY = {"SGD", "ASGD", "Rprop", "LBFGS"}
SIGN_FAMILY = {"Lion", "SignSGD", "Signum"}


def geometry(opt: torch.optim.Optimizer) -> tuple[str, str | None]:
    """(the geometry's name, a note for the report or None): 'adam', 'adamax', 'adagrad', 'rmsprop',
    'adafactor' (torch's or Hugging Face's), 'raw' (SGD family), or 'raw' with a note saying why the
    preconditioned estimate is not sound for this optimizer."""
    names = [cls.__name__ for cls in type(opt).__mro__]
    name = names[0]
    if "Adafactor" in names:
        return "adafactor", None
    for family in ("Adamax", "Adagrad", "RMSprop"):
        if family in names:
            return family.lower(), None
    if {"Adam", "AdamW", "NAdam", "RAdam"}.intersection(names) or _has_group_keys(opt, "betas", "eps"):
        return "adam", None
    if SGD_FAMILY.intersection(names):
        return "raw", None
    if SIGN_FAMILY.intersection(names):
        return "raw", (f"{name} steps by the sign of its update: no per-coordinate divisor describes it, so the "
                       "noise scale is measured on raw gradients (an SGD quantity; it may misjudge this optimizer)")
    return "raw", (f"{name} is not an optimizer whose geometry bsadvisor knows: the noise scale is measured on raw "
                   "gradients (an SGD quantity)")


def _has_group_keys(opt: torch.optim.Optimizer, *keys: str) -> bool:
    return all(k in opt.param_groups[0] for k in keys) and isinstance(opt.param_groups[0].get("betas"), (tuple, list))


def divisor(opt: torch.optim.Optimizer, kind: str, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
    """D for parameter `p` whose step gradient is `g` (float64), in geometry `kind` (from `geometry`)."""
    if kind == "raw":
        return None
    group = next(gr for gr in opt.param_groups if any(q is p for q in gr["params"]))
    state = opt.state.get(p, {})
    step = float(state.get("step", 0)) + 1  # the step this gradient would be
    return _DIVISORS[kind](group, state, g, step)


def _state(state: dict, key: str, g: torch.Tensor) -> torch.Tensor:
    value = state.get(key)
    return torch.zeros_like(g) if value is None else value.detach().double()


def _adam(group, state, g, step):
    beta1, beta2 = group["betas"]
    v = beta2 * _state(state, "exp_avg_sq", g) + (1 - beta2) * g * g
    if group.get("amsgrad") and state.get("max_exp_avg_sq") is not None:
        v = torch.maximum(state["max_exp_avg_sq"].detach().double(), v)
    return (v / (1 - beta2 ** step)).sqrt() + group["eps"]


def _adamax(group, state, g, step):
    beta2 = group["betas"][1]
    return torch.maximum(beta2 * _state(state, "exp_inf", g), g.abs() + group["eps"])


def _adagrad(group, state, g, step):
    return (_state(state, "sum", g) + g * g).sqrt() + group["eps"]


def _rmsprop(group, state, g, step):
    alpha = group["alpha"]
    v = alpha * _state(state, "square_avg", g) + (1 - alpha) * g * g
    if group.get("centered"):
        mean = alpha * _state(state, "grad_avg", g) + (1 - alpha) * g
        v = v - mean * mean
    return v.clamp(min=0).sqrt() + group["eps"]


def _adafactor(group, state, g, step):
    """torch.optim.Adafactor (row_var/col_var/variance, beta2_decay) or Hugging Face's
    (exp_avg_sq_row/_col/exp_avg_sq, decay_rate): the factored second moment, updated with g."""
    if "beta2_decay" in group:  # torch's
        rate = step ** group["beta2_decay"]  # 1 - beta2_t
        eps1 = group["eps"][0] if group["eps"][0] is not None else torch.finfo(torch.float32).eps
        if g.dim() > 1:
            row = torch.lerp(_state(state, "row_var", g.mean(-1, keepdim=True)), (g * g).mean(-1, keepdim=True), rate)
            col = torch.lerp(_state(state, "col_var", g.mean(-2, keepdim=True)), (g * g).mean(-2, keepdim=True), rate)
            v = row @ col / row.mean(-2, keepdim=True).clamp(min=eps1)
        else:
            v = torch.lerp(_state(state, "variance", g), g * g, rate)
        return v.clamp(min=eps1 * eps1).sqrt()
    rate = step ** group.get("decay_rate", -0.8)  # Hugging Face's: beta2_t = 1 - step**decay_rate
    eps = group.get("eps", (1e-30, 1e-3))
    squared = g * g + (eps[0] if isinstance(eps, (tuple, list)) else eps)
    if g.dim() > 1 and state.get("exp_avg_sq_row") is not None:
        row = torch.lerp(state["exp_avg_sq_row"].detach().double(), squared.mean(-1), rate)
        col = torch.lerp(state["exp_avg_sq_col"].detach().double(), squared.mean(-2), rate)
        v = (row / row.mean(-1, keepdim=True)).unsqueeze(-1) * col.unsqueeze(-2)
    else:  # a vector, or the first step of a matrix (no factored state yet: rate is 1, v is the square)
        v = torch.lerp(_state(state, "exp_avg_sq", g), squared, rate)
    return v.sqrt()


_DIVISORS = {"adam": _adam, "adamax": _adamax, "adagrad": _adagrad, "rmsprop": _rmsprop, "adafactor": _adafactor}
