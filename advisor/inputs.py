"""A ModelSpec from Python objects, for the API: what a model file defines, given directly.

- `model`: a function that builds a fresh model (as the file's `model()`), or a module instance: each probe
  then gets a deep copy of it as it was when given (same weights every time), on the CPU.
- `batch`: a function of the batch size (as the file's `batch(size)`), a DataLoader over a dataset with a
  length (examples drawn at random, collated by the loader's collate_fn), or any iterable of batches
  (consecutive batches joined and cut to the size asked for).
- `loss(model, batch)` and `optimizer(params)` as in the file, or None for the defaults; `optimizer` may also
  be an optimizer instance built on the given module: each probe's optimizer is a fresh one of its class
  with its settings, parameter group by parameter group.

Every call into these objects goes through the same checks as a model file's (one-line BadInput errors).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from advisor.errors import BadInput
from advisor.spec import CheckedLoss, ModelSpec, autocast_dtype
from advisor.step import batch_size_of, default_loss


def spec_from(model: Any, batch: Any, loss: Callable | None = None, optimizer: Any = None, autocast: Any = None,
              name: str | None = None) -> ModelSpec:
    """The ModelSpec of these objects; `name` starts every message about them (default: the model's name)."""
    name = name or _name_of(model)
    if batch is None:
        raise BadInput(f"{name}: no batch given: a function of the batch size, a DataLoader or an iterable of batches")
    build_model = _model_factory(model, name)
    make_optimizer, model_optimizer = _optimizer_factory(optimizer, model, name)
    return ModelSpec(
        path=name, build_model=build_model, make_batch=_batch_source(batch, name),
        loss=CheckedLoss(name, loss or default_loss, default=loss is None, autocast=autocast_dtype(name, autocast)),
        make_optimizer=make_optimizer, base_batch_size=None, make_model_optimizer=model_optimizer)


def _name_of(model: Any) -> str:
    if isinstance(model, torch.nn.Module):
        return type(model).__name__
    return getattr(model, "__qualname__", None) or getattr(model, "__name__", None) or type(model).__name__


def _model_factory(model: Any, name: str) -> Callable[[], torch.nn.Module]:
    if isinstance(model, torch.nn.Module):  # (a module is callable too: it is the instance that counts)
        return FreshCopies(model)
    if not callable(model):
        raise BadInput(f"{name}: model must be a function that builds the model, or a torch.nn.Module, "
                       f"got {type(model).__name__}")
    return model


class FreshCopies:
    """model() for a module instance: a deep copy, on the CPU, of the module as it was when given (a training
    run that goes on with the instance does not move the probes' starting point)."""

    def __init__(self, module: torch.nn.Module):
        self.pristine = copy.deepcopy(module).to("cpu")

    def __call__(self) -> torch.nn.Module:
        return copy.deepcopy(self.pristine)


def _optimizer_factory(optimizer: Any, model: Any, name: str):
    """(optimizer(params), optimizer(model) or None): the default AdamW, the caller's function, or fresh
    optimizers like an instance's."""
    if optimizer is None:
        return (lambda params: torch.optim.AdamW(params, lr=1e-3)), None
    if isinstance(optimizer, torch.optim.Optimizer):
        if not isinstance(model, torch.nn.Module):
            raise BadInput(f"{name}: an optimizer instance needs the module it was built on as the model "
                           "(or pass a function of the parameters)")
        return (lambda params: torch.optim.AdamW(params, lr=1e-3)), LikeOptimizer(optimizer, model)
    if not callable(optimizer):
        raise BadInput(f"{name}: optimizer must be a function of the parameters or a torch.optim.Optimizer, "
                       f"got {type(optimizer).__name__}")
    return optimizer, None


class LikeOptimizer:
    """optimizer(model) for a copy of `module`: a fresh optimizer of `template`'s class and settings, each
    parameter in the group its original was in (matched by name), without its state."""

    def __init__(self, template: torch.optim.Optimizer, module: torch.nn.Module):
        self.kind = type(template)
        # defaults may hold more than the constructor takes (AdamW's decoupled_weight_decay): each group keeps
        # every setting, and the constructor gets those it names
        accepted = inspect.signature(self.kind.__init__).parameters
        self.defaults = {k: v for k, v in template.defaults.items() if k in accepted}
        group_of = {id(p): i for i, group in enumerate(template.param_groups) for p in group["params"]}
        self.groups = [{k: v for k, v in group.items() if k != "params"} for group in template.param_groups]
        self.group_by_name = {n: group_of[id(p)] for n, p in module.named_parameters() if id(p) in group_of}

    def __call__(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        groups = [dict(options, params=[]) for options in self.groups]
        for n, p in model.named_parameters():
            if n in self.group_by_name:
                groups[self.group_by_name[n]]["params"].append(p)
        return self.kind([g for g in groups if g["params"]], **self.defaults)


def _batch_source(batch: Any, name: str) -> Callable[[int], Any]:
    if isinstance(batch, torch.utils.data.DataLoader) and _has_length(batch.dataset) and \
            not isinstance(batch.dataset, torch.utils.data.IterableDataset):
        return DrawnFromDataset(batch.dataset, batch.collate_fn)
    if callable(batch) and not isinstance(batch, torch.utils.data.DataLoader):
        return batch
    if isinstance(batch, Iterable):
        return JoinedBatches(batch, name)
    raise BadInput(f"{name}: batch must be a function of the batch size, a DataLoader or an iterable of "
                   f"batches, got {type(batch).__name__}")


def _has_length(dataset: Any) -> bool:
    try:
        return len(dataset) > 0
    except TypeError:
        return False


class DrawnFromDataset:
    """batch(size) from a map-style dataset: `size` examples drawn at random, collated as the loader does."""

    def __init__(self, dataset, collate_fn):
        self.dataset, self.collate_fn = dataset, collate_fn

    def __call__(self, size: int) -> Any:
        picks = torch.randint(len(self.dataset), (size,)).tolist()
        return self.collate_fn([self.dataset[i] for i in picks])


class JoinedBatches:
    """batch(size) from an iterable of batches: the next batches, joined along the first dimension and cut to
    `size` (the rest kept for the next call); the iterable starts over when it ends."""

    def __init__(self, batches: Iterable, name: str):
        self.batches, self.name = batches, name
        self._iterator: Iterator | None = None
        self._left: list[Any] = []  # batches (or their rests) not yet handed out

    def __call__(self, size: int) -> Any:
        pieces, have = [], 0
        while have < size:
            piece = self._left.pop(0) if self._left else self._next()
            n = batch_size_of(piece)
            if not n:
                raise BadInput(f"{self.name}: the batches given have no examples along a first dimension")
            if have + n > size:
                self._left.insert(0, _rows(piece, size - have, n))
                piece = _rows(piece, 0, size - have)
                n = size - have
            pieces.append(piece)
            have += n
        return pieces[0] if len(pieces) == 1 else _joined(pieces, self.name)

    def _next(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self.batches)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.batches)
            try:
                return next(self._iterator)
            except StopIteration:
                raise BadInput(f"{self.name}: the batches given are empty") from None


def _rows(batch: Any, start: int, stop: int) -> Any:
    """Examples `start` to `stop` of every tensor in `batch`."""
    leaves, structure = tree_flatten(batch)
    return tree_unflatten([t[start:stop] if isinstance(t, torch.Tensor) else t for t in leaves], structure)


def _joined(pieces: list[Any], name: str) -> Any:
    """Batches of one structure joined along the first dimension."""
    flat = [tree_flatten(p) for p in pieces]
    structure = flat[0][1]
    if any(s != structure for _, s in flat):
        raise BadInput(f"{name}: the batches given differ in structure and cannot be joined")
    joined = []
    for column in zip(*(leaves for leaves, _ in flat)):
        if not isinstance(column[0], torch.Tensor):
            joined.append(column[0])
            continue
        if len({t.shape[1:] for t in column}) > 1:
            raise BadInput(f"{name}: the batches given differ in shape past the first dimension (padded per "
                           "batch?) and cannot be joined to another size; pass a DataLoader over a dataset, "
                           "or a function batch(size)")
        joined.append(torch.cat(column))
    return tree_unflatten(joined, structure)

