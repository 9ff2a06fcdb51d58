"""Exact tensor bytes of a step: a dispatch mode that follows every live storage.

Each operator's outputs are looked at once; a storage is counted when first seen and uncounted when
Python's weak reference to it dies. Views share their base's storage and are counted once. The same
code runs on real CPU tensors and on FakeTensorMode tensors, where nothing is really allocated.
"""

import weakref
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveStorageTracker(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self._live: dict[int, tuple[weakref.ref, int]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors made outside the mode (parameters, buffers) as live."""
        for tensor in tensors:
            self._track(tensor)

    def reset_peak(self) -> None:
        self.peak_bytes = self.current_bytes

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._live:
            return
        size = storage.nbytes()
        self._live[key] = (weakref.ref(storage, lambda _, key=key: self._forget(key)), size)
        self.current_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)

    def _forget(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.current_bytes -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out
