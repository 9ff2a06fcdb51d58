"""The peak tensor bytes of a steady-state training step at any batch size.

`StepTracer(spec, fake=True)` runs the step under FakeTensorMode: shapes and dtypes flow, nothing is
allocated, so batch 10**6 costs what batch 8 costs. `fake=False` runs real CPU steps under the same
tracker: exact and honest, but it allocates the batch (tests and a fall-back use it).
"""

import contextlib
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from advisor.errors import ProbeFailed
from advisor.memory.tracker import LiveStorageTracker
from advisor.spec import ModelSpec, one_line
from advisor.step import map_tensors, train_step


class StepTracer:
    def __init__(self, spec: ModelSpec, fake: bool = True, seed: int = 0, smallest: int = 1):
        self.spec, self.fake = spec, fake
        torch.manual_seed(seed)
        self.example = spec.batch(smallest)  # the batch's structure: shapes past the first dimension, dtypes
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
        return map_tensors(lambda t: torch.empty((size, *t.shape[1:]), dtype=t.dtype), self.example)


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
