"""`--shard N`: the peak on one GPU of N under full sharding (FSDP / ZeRO-3), traced, not computed by hand.

The fake model is wrapped with torch's own FSDP2 (`fully_shard`) under a fake process group (torch's
`FakeStore` and "fake" backend: collectives return at once, nothing is sent), as torch's FSDPMemTracker
tests and torchtitan's memory estimation do, and the step is traced as rank 0 runs it: its shard of the
parameters, gradients and optimizer state, each layer's parameters gathered for its forward and backward
and freed after (FSDP frees them by resizing their storage, which the tracker follows), the
reduce-scatter buffers. What FSDP shards is each repeated block (the classes a transformers model lists
in `_no_split_modules`, else the children of the module list holding the most parameters) and the root.
The process group is this process's default group, made for the trace and destroyed by `release()`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

MAX_SHARD = 4096

_world: int | None = None  # the world size of the fake process group this module made, if any


def mesh(world: int):
    """A one-dimensional device mesh over a fake process group of `world` ranks (this process is rank 0)."""
    global _world
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if _world != world:
        release()
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
        _world = world
    return init_device_mesh("cpu", (world,))


def release() -> None:
    """Destroy the fake process group, if this module made one (never a real job's)."""
    global _world
    if _world is not None and dist.is_initialized():
        dist.destroy_process_group()
    _world = None


def shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules FSDP wraps one by one: the model's declared blocks, else its largest list's children."""
    declared = set(getattr(model, "_no_split_modules", None) or ())
    if declared:
        units = [m for m in model.modules() if type(m).__name__ in declared]
        if units:
            return units
    lists = [m for m in model.modules() if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)) and len(m) > 1]
    if not lists:
        return []
    largest = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    return [child for child in largest if any(True for _ in child.parameters())]


def fully_sharded(world: int, reshard_after_forward: bool = True):
    """A `prepare(model)` for StepTracer: the model under FSDP2 across `world` ranks."""
    from torch.distributed.fsdp import fully_shard

    device_mesh = mesh(world)  # made here, outside the trace's FakeTensorMode: it reads real rank tensors

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        for unit in shard_units(model):
            fully_shard(unit, mesh=device_mesh, reshard_after_forward=reshard_after_forward)
        fully_shard(model, mesh=device_mesh, reshard_after_forward=reshard_after_forward)
        return model

    return prepare
