"""The one training step every probe runs, and the plumbing around it: batches, devices, state.

`opt.zero_grad(set_to_none=True); l = loss(m, b); l.backward(); opt.step()` — the same step for
memory, time and gradients, so that each describes what the user's training does.
"""

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_map


def gradient_bytes(model: torch.nn.Module) -> int:
    """The bytes of the gradients a step makes: those of every parameter that trains."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def tensors_in(batch: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_flatten(batch)[0] if isinstance(leaf, torch.Tensor)]


def batch_size_of(batch: Any) -> int | None:
    tensors = tensors_in(batch)
    return tensors[0].shape[0] if tensors and tensors[0].dim() > 0 else None


def map_tensors(fn, batch: Any) -> Any:
    return tree_map(lambda leaf: fn(leaf) if isinstance(leaf, torch.Tensor) else leaf, batch)


def move_batch(batch: Any, device: torch.device) -> Any:
    return map_tensors(lambda t: t.to(device, non_blocking=True), batch)


def split_batch(batch: Any, micro: int) -> list[Any]:
    """Cut a batch into consecutive micro-batches of `micro` examples (the last may be short)."""
    total = batch_size_of(batch)
    return [map_tensors(lambda t, i=i: t[i:i + micro], batch) for i in range(0, total, micro)]


def default_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """DESIGN's default: call the model; a scalar or `.loss` output is the loss; else (x, y) CE or MSE."""
    if isinstance(batch, dict):
        return _loss_from_output(model(**batch), None)
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return _loss_from_output(model(batch[0]), None)
        *inputs, target = batch
        return _loss_from_output(model(*inputs), target)
    return _loss_from_output(model(batch), None)


def _loss_from_output(out: Any, target: torch.Tensor | None) -> torch.Tensor:
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        return out.reshape(())
    found = getattr(out, "loss", None)
    if found is None and isinstance(out, dict):
        found = out.get("loss")
    if found is not None:
        return found
    if target is None or not isinstance(out, torch.Tensor):
        raise TypeError("the model's output is neither a scalar nor has a .loss, and the batch has no target "
                        "to compare with; define loss(model, batch)")
    if target.is_floating_point():
        return F.mse_loss(out.reshape(target.shape) if out.numel() == target.numel() else out, target)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn, batch: Any) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    value = loss_fn(model, batch)
    value.backward()
    opt.step()
    return value.detach()


class SavedState:
    """A copy of model and optimizer state, so each probe starts where the last one did.

    The copy lives on the CPU: on a GPU a second copy of the weights and optimizer state would
    take the memory the probes measure and search."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer):
        self.model, self.opt = model, opt
        self.model_state = _host_copy(model.state_dict())
        self.opt_state = _host_copy(opt.state_dict())

    def restore(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.model.load_state_dict(self.model_state)
        self.opt.load_state_dict(self.opt_state)


def _host_copy(state: Any) -> Any:
    """A deep copy of a state dict with every tensor on the CPU (load_state_dict moves them back)."""
    copied = map_tensors(lambda t: t.detach().to("cpu", copy=True), state)
    if hasattr(state, "_metadata"):  # a module state dict's versions, which load_state_dict reads
        copied._metadata = copy.deepcopy(state._metadata)
    return copied
