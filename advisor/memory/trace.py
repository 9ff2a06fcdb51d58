"""The peak tensor bytes of a steady-state training step at any batch size.

`StepTracer(spec, fake=True)` runs the step under FakeTensorMode: shapes and dtypes flow, nothing is
allocated, so batch 10**6 costs what batch 8 costs. `fake=False` runs real CPU steps under the same
tracker: exact and honest, but it allocates the batch (tests and a fall-back use it).
"""

import contextlib
import math
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from advisor.errors import ProbeFailed
from advisor.memory.tracker import LiveStorageTracker
from advisor.spec import ModelSpec, one_line
from advisor.step import map_tensors, tensors_in, train_step


class StepTracer:
    def __init__(self, spec: ModelSpec, fake: bool = True, seed: int = 0, smallest: int = 1,
                 batch_on_host: bool = True):
        """`batch_on_host`: the step holds the batch as `batch()` made it (CPU), so fake batches keep its
        layout; False where the step holds a copy on a device, one compact tensor each (CUDA, profiles)."""
        self.spec, self.fake = spec, fake
        torch.manual_seed(seed)
        self.example = spec.batch(smallest)  # the batch's structure: shapes past the first dimension, dtypes
        self.layout = (host_layout(self.example, spec.batch(2 * smallest), smallest) if fake and batch_on_host
                       else [None] * len(tensors_in(self.example)))  # one compact tensor each
        self.mode = FakeTensorMode(allow_non_fake_inputs=False) if fake else None
        self.model = spec.model()
        if fake:
            _make_fake(self.model, self.mode)
        self.opt = spec.optimizer(self.model)
        self.tracker = LiveStorageTracker()
        self.tracker.track(self.model.parameters())
        self.tracker.track(self.model.buffers())
        self.peak(smallest)  # the first step creates the optimizer's state; every later step is steady-state

    def peak(self, batch_size: int) -> int:
        """Peak bytes live during one steady-state step at `batch_size`: parameters, buffers,
        gradients, optimizer state, the batch, activations and temporaries."""
        try:
            with self._modes():
                batch = self._batch(batch_size)
                self.tracker.reset_peak()
                train_step(self.model, self.opt, self.spec.loss, batch)
                del batch
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            how = "traced under FakeTensorMode" if self.fake else "tracked"
            raise ProbeFailed(f"{self.spec.path}: the step at batch {batch_size} could not be {how}: "
                              f"{type(exc).__name__}: {one_line(exc)}") from exc
        return self.tracker.peak_bytes

    def _modes(self):
        stack = contextlib.ExitStack()
        if self.mode is not None:
            stack.enter_context(self.mode)
        stack.enter_context(self.tracker)
        return stack

    def _batch(self, size: int) -> Any:
        if not self.fake:
            return self.spec.batch(size)
        return fake_batch_like(self.example, self.layout, size)


def host_layout(example: Any, twice: Any, smallest: int) -> list[tuple[int, float] | None]:
    """How each tensor of a batch holds memory on the host, from batch(smallest) and batch(2·smallest):
    (storage group, bytes per example) for tensors whose storage grows with the batch, shared between
    views of one storage (x, y = chunk[:, :-1], chunk[:, 1:] hold the chunk once; y = rows[:, -1] holds
    all of `rows`); None, one compact tensor, for the rest (a view into data that exists anyway)."""
    tensors, doubled = tensors_in(example), tensors_in(twice)
    if len(tensors) != len(doubled):
        return [None] * len(tensors)
    groups: dict[int, tuple[int, torch.dtype]] = {}
    layout: list[tuple[int, float] | None] = []
    for t, t2 in zip(tensors, doubled):
        nbytes, key = t.untyped_storage().nbytes(), t.untyped_storage().data_ptr()
        grows = t.dim() > 0 and nbytes > 0 and t2.untyped_storage().nbytes() == 2 * nbytes
        group = groups.setdefault(key, (len(groups), t.dtype)) if grows else None
        layout.append((group[0], nbytes / smallest) if group and group[1] == t.dtype else None)
    return layout


def fake_batch_like(example: Any, layout: list[tuple[int, float] | None], size: int) -> Any:
    """Fake tensors of batch `size` laid out as `host_layout` says: views of one storage per group, a
    compact tensor where the layout says None."""
    tensors = tensors_in(example)
    elements: dict[int, int] = {}  # per group: enough for its share of the batch and for every view's extent
    for t, where in zip(tensors, layout):
        if where is not None:
            shape = (size, *t.shape[1:])
            extent = t.storage_offset() + sum((n - 1) * step for n, step in zip(shape, t.stride())) + 1
            elements[where[0]] = max(elements.get(where[0], 0), math.ceil(where[1] * size / t.element_size()), extent)
    bases: dict[int, torch.Tensor] = {}
    places = iter(layout)

    def like(t: torch.Tensor) -> torch.Tensor:
        where, shape = next(places), (size, *t.shape[1:])
        if where is None:
            return torch.empty(shape, dtype=t.dtype)
        if where[0] not in bases:
            bases[where[0]] = torch.empty(elements[where[0]], dtype=t.dtype)
        return bases[where[0]].as_strided(shape, t.stride(), t.storage_offset())

    return map_tensors(like, example)


def _make_fake(model: torch.nn.Module, mode: FakeTensorMode) -> None:
    """Swap every parameter and buffer for a fake twin (tied weights stay tied)."""
    twins: dict[int, torch.Tensor] = {}

    def twin(t: torch.Tensor, parameter: bool) -> torch.Tensor:
        if id(t) not in twins:
            fake = mode.from_tensor(t.detach())
            twins[id(t)] = torch.nn.Parameter(fake, requires_grad=t.requires_grad) if parameter else fake
        return twins[id(t)]

    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = twin(p, parameter=True)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = twin(b, parameter=False)


def release_trace_caches() -> None:
    """FakeTensorMode's dispatch cache is class-wide and keyed by shapes, so it grows with every new
    batch size traced; a long-lived process (many runs, the soak) drops it after each run."""
    FakeTensorMode.cache_clear()
