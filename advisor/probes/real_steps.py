"""Peak memory of real steady-state steps on the device: what the fake-mode trace predicts, measured.

`RealSteps` builds the model and optimizer on the device once and runs a warm step (optimizer
state, cuBLAS and cuDNN handles). Each measured step then restores the saved state and runs one step
under the backend's `measuring()`: on CUDA the allocator's cache emptied and its peak statistics reset,
the peak `torch.cuda.max_memory_reserved` (what the device had to give; `max_memory_allocated`, the
tensors alone, is kept beside it); on the CPU the tracked tensor bytes. An out-of-memory step is a
measurement too: it does not fit.

On CUDA, the context (the driver's per-process state, kernels, library handles) is memory that neither
the allocator nor the fake trace sees. It is measured as a difference: NVML's free memory before
this process's first CUDA work less after the warm step, less what the allocator reserved in
between. This needs no per-process NVML figures, which containers hide (NVML reports host pids); a
process that allocates on the card in that window makes the figure larger, never smaller. Where
CUDA was already initialised, the context is already outside the free memory the budget was read
from, and the difference is the little the warm step added. Real steps must fit the budget less it.
"""

from __future__ import annotations

import torch

from advisor.devices import Backend, Peak
from advisor.devices.recovery import try_step
from advisor.errors import BadInput
from advisor.spec import ModelSpec
from advisor.step import SavedState, move_batch, tensors_in, train_step


class RealSteps:
    def __init__(self, spec: ModelSpec, backend: Backend, seed: int = 0, smallest: int = 1):
        self.spec, self.backend = spec, backend
        self.peaks: dict[int, Peak | None] = {}  # batch -> its real step's peak; None: out of memory
        self.first_step = Peak()  # the warm step's peak (it creates the optimizer's state)
        free_before, reserved_before = backend.free_memory()[0], backend.reserved_now()
        torch.manual_seed(seed)
        if try_step(lambda: self._build(smallest), backend, f"the first step at batch {smallest} on "
                    f"{backend.device}") is None:
            raise BadInput(f"{spec.path}: nothing fits on {backend.device}: the model, its optimizer and a "
                           f"step at batch {smallest} run out of memory")
        self.saved = SavedState(self.model, self.opt)
        # what the device lost to this process beyond the allocator's reserve (the CUDA context)
        self.context_bytes = 0
        if backend.measures_context:
            free_after, reserved_after = backend.free_memory()[0], backend.reserved_now()
            self.context_bytes = max(0, (free_before - free_after) - (reserved_after - reserved_before))

    def _build(self, smallest: int) -> bool:
        self.model = self.spec.model().to(self.backend.device)
        self.opt = self.spec.optimizer(self.model)
        data = move_batch(self.spec.batch(smallest), self.backend.device)
        with self.backend.measuring(self._resident(data)) as self.first_step:  # the warm step: it creates
            train_step(self.model, self.opt, self.spec.loss, data)          # the optimizer's state
        return True

    def peak(self, batch: int) -> int | None:
        """Bytes the allocator reserved at the peak of one steady-state step at `batch`; None when
        the step runs out of memory (the memory is then freed and the state restored)."""
        if batch not in self.peaks:
            self.peaks[batch] = try_step(lambda: self._measured_step(batch), self.backend,
                                         f"the real step at batch {batch} on {self.backend.device}",
                                         restore=self.saved.restore)
        found = self.peaks[batch]
        return None if found is None else found.reserved

    def _measured_step(self, batch: int) -> Peak:
        self.saved.restore()
        data = move_batch(self.spec.batch(batch), self.backend.device)
        with self.backend.measuring(self._resident(data)) as peak:
            train_step(self.model, self.opt, self.spec.loss, data)
        return peak

    def _resident(self, data) -> list[torch.Tensor]:
        """The tensors live when the step starts (the CPU's tracker needs them; CUDA's allocator knows)."""
        state = [t for s in self.opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        return [*self.model.parameters(), *self.model.buffers(), *state, *tensors_in(data)]
