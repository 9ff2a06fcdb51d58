"""The peak tensor bytes of a steady-state training step at any batch size.

`StepTracer(spec, fake=True)` runs the step under FakeTensorMode: shapes and dtypes flow, nothing is
allocated, so batch 10**6 costs what batch 8 costs. `fake=False` runs real CPU steps under the same
tracker: exact and honest, but it allocates the batch (tests and the fidelity check use it).

With `build_fake=True`, `model()` and the optimizer run under the same FakeTensorMode, so not even the
weights are allocated: an 8-billion-parameter model is traced in a few hundred megabytes. Otherwise the
model is built for real and its tensors swapped for fake twins (what a CPU device needs anyway). Either
way the optimizer is built under the mode, so state it makes in its constructor (Adagrad's sums and
step counts) is fake like the parameters, and counted from the start.

The step is the one every probe runs, in training mode; with `ACCUMULATION_STEPS` > 1 it is two
micro-batches' backward passes before the optimizer step (the gradients of the first are live through the
second; every later micro-batch repeats the second's memory, so two give the peak of any number).
"""

import contextlib
import math
import sys
import warnings
from typing import Any, Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from advisor.errors import BadInput, ProbeFailed
from advisor.memory.library_shims import as_real_training, as_real_construction
from advisor.memory.shapes import batch_shapes
from advisor.memory.tracker import LiveStorageTracker
from advisor.spec import ModelSpec, one_line
from advisor.step import map_tensors, tensors_in, train_step


class StepTracer:
    def __init__(self, spec: ModelSpec, fake: bool = True, seed: int = 0, smallest: int = 1,
                 batch_on_host: bool = True, build_fake: bool = False,
                 prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                 configure: Callable[[torch.optim.Optimizer], None] | None = None,
                 around_step: Callable[[], Any] | None = None):
        """`batch_on_host`: the step holds the batch as `batch()` made it (CPU), so fake batches keep its
        layout; False where the step holds a copy on a device, one compact tensor each (CUDA, profiles).
        `prepare(model)`: applied to the fake model before its optimizer is built (sharding);
        `configure(optimizer) -> optimizer`: applied to the optimizer once built, returning the one to step
        (the implementation a device picks; ZeRO-1's wrapper);
        `around_step()`: a context manager entered around every traced step (an attention backend)."""
        self.spec, self.fake, self.built_fake, self.prepare = spec, fake, fake and build_fake, prepare
        self.around_step = around_step or contextlib.nullcontext
        torch.manual_seed(seed)
        shapes = batch_shapes(spec, smallest) if fake else None
        self.example = shapes.example if shapes else spec.batch(smallest)
        self.shapes_vary = bool(shapes and shapes.varies)
        self.layout = [None] * len(tensors_in(self.example))  # one compact tensor each
        if fake and batch_on_host and not self.shapes_vary:
            twice = spec.batch(2 * smallest)
            self.layout = host_layout(self.example, twice, smallest)
            self.example = twice  # its strides are the batch's (at one example, a dimension of 1 has any stride)
        self.mode = FakeTensorMode(allow_non_fake_inputs=False) if fake else None
        self.model = self._build_model()
        if prepare is not None:
            with self.mode if fake else contextlib.nullcontext():
                self.model = prepare(self.model)
        with self.mode if fake else contextlib.nullcontext():
            self.opt = spec.optimizer(self.model)
            if configure is not None:  # under the mode: a wrapping optimizer may make state as it is built
                self.opt = configure(self.opt)
        self._traced_peaks: dict[int, tuple[int, int]] = {}  # fake traces: batch -> (peak, rounded peak)
        self.peak_rounded = 0  # the last peak asked for, each allocation rounded up as CUDA's allocator does
        self.tracker = LiveStorageTracker()
        self.tracker.track(local_tensors(self.model.parameters()))
        self.tracker.track(local_tensors(self.model.buffers()))
        self.tracker.track(local_tensors(optimizer_state(self.opt)))  # made by the constructor (Adagrad)
        # the first step creates the optimizer's state, so its peak is not a steady state's and is not kept;
        # every later step is steady-state
        self._traced(smallest, lambda: self._batch(smallest))

    def _build_model(self) -> torch.nn.Module:
        if not self.fake:
            return self.spec.model()
        if not self.built_fake:
            model = self.spec.model()
            _make_fake(model, self.mode)
            return model
        self.mode.allow_non_fake_inputs = True  # a real tensor the file copies in (a checkpoint) becomes fake
        try:
            with self.mode, as_real_construction(self.mode):
                model = self.spec.model()
        finally:
            self.mode.allow_non_fake_inputs = False
        _make_fake(model, self.mode)  # anything made outside the mode (a module-level tensor it reuses)
        return model

    def peak(self, batch_size: int) -> int:
        """Peak bytes live during one steady-state step at `batch_size`: parameters, buffers,
        gradients, optimizer state, the batch, activations and temporaries. A fake trace is the same at
        the same batch every time, so each is traced once."""
        if batch_size not in self._traced_peaks:
            exact = self._traced(batch_size, lambda: self._batch(batch_size))
            if not self.fake:
                return exact
            self._traced_peaks[batch_size] = (exact, self.tracker.peak_rounded)
        exact, self.peak_rounded = self._traced_peaks[batch_size]
        return exact

    def peak_like(self, batch: Any) -> int:
        """The peak of a step on `batch` (real steps) or on compact fake tensors of its shapes (fake ones)."""
        size = len(tensors_in(batch)[0])
        if self.fake:
            return self._traced(size, lambda: fake_batch_like(batch, [None] * len(tensors_in(batch)), size))
        return self._traced(size, lambda: map_tensors(lambda t: t.clone(memory_format=torch.contiguous_format),
                                                      batch))

    def _traced(self, batch_size: int, make_batch: Callable[[], Any]) -> int:
        try:
            with self._modes():
                micro = micro_batches_traced(self.spec)
                batch = make_batch() if micro == 1 else None
                self.tracker.reset_peak()
                with self.around_step():
                    if micro == 1:
                        train_step(self.model, self.opt, self.spec.loss, batch)
                    else:
                        accumulated_step(self.model, self.opt, self.spec.loss, make_batch, micro)
                del batch
            self.peak_rounded = self.tracker.peak_rounded
        except (KeyboardInterrupt, MemoryError, BadInput):
            raise
        except Exception as exc:
            how = "traced under FakeTensorMode" if self.fake else "tracked"
            raise ProbeFailed(f"{self.spec.path}: the step at batch {batch_size} could not be {how}: "
                              f"{type(exc).__name__}: {one_line(exc)}") from exc
        return self.tracker.peak_bytes

    def _modes(self):
        stack = contextlib.ExitStack()
        if self.mode is not None:
            stack.enter_context(as_real_training())
            stack.enter_context(self.mode)
        if self.prepare is not None:
            # FSDP2 warns of every wrapped module that returns a view (a Linear on 3-d input does) that an
            # in-place op on it would skip a gather: advice for a real run, noise around a trace
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        stack.enter_context(self.tracker)
        return stack

    def _batch(self, size: int) -> Any:
        if not self.fake:
            return self.spec.batch(size)
        return fake_batch_like(self.example, self.layout, size)

    def trained_without_gradient(self) -> bool:
        """After a step: no parameter the optimizer trains received a gradient (the loss ignores the model)."""
        return not any(p.grad is not None for group in self.opt.param_groups for p in group["params"])


def micro_batches_traced(spec: ModelSpec) -> int:
    """Two micro-batches stand for any accumulation: from the second on, each holds what the second holds."""
    return min(spec.accumulation_steps, 2)


def accumulated_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn, make_batch: Callable[[], Any],
                     micro_batches: int) -> None:
    """The step with gradient accumulation: each micro-batch made as a loader hands it over (the one before it
    dropped), its backward pass adding into the gradients; the optimizer steps with the last one and its loss
    still in hand, as `for b in loader: loss = ...; loss.backward(); if last: opt.step()` holds them."""
    opt.zero_grad(set_to_none=True)
    batch = value = None
    for _ in range(micro_batches):
        batch = value = None  # the previous micro-batch is gone before the next is made
        batch = make_batch()
        value = loss_fn(model, batch) / micro_batches
        value.backward()
    opt.step()


def optimizer_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    zero = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")  # not imported: not one of its
    if zero is not None and isinstance(opt, zero.ZeroRedundancyOptimizer):  # ZeRO-1: the rank's local optimizer
        opt = opt.optim
    return [t for state in opt.state.values() for t in state.values() if isinstance(t, torch.Tensor)]


def local_tensors(tensors) -> list[torch.Tensor]:
    """Each tensor as this process holds it: a DTensor's local shard (sharded parameters), else itself."""
    return [t.to_local() if hasattr(t, "to_local") else t for t in tensors]


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
    """Swap every real parameter and buffer for a fake twin (tied weights stay tied); fake ones stay."""
    twins: dict[int, torch.Tensor] = {}

    def twin(t: torch.Tensor, parameter: bool) -> torch.Tensor:
        if isinstance(t, FakeTensor) and t.fake_mode is mode:
            return t
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
    batch size traced; a long-lived process (many runs, the soak) drops it after each run, and the fake
    process group a sharded trace made."""
    FakeTensorMode.cache_clear()
    from advisor.memory import shard

    shard.release()
