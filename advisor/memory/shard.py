"""`--shard N`: the peak on one GPU of N under sharded training (FSDP / ZeRO), traced, not computed by hand.

The fake model is wrapped with torch's own FSDP2 (`fully_shard`) under a fake process group (torch's
`FakeStore` and "fake" backend: collectives return at once, nothing is sent), as torch's FSDPMemTracker
tests and torchtitan's memory estimation do, and the step is traced as rank 0 runs it: its shard of the
parameters, gradients and optimizer state, each layer's parameters gathered for its forward and backward
and freed after (FSDP frees them by resizing their storage, which the tracker follows), the
reduce-scatter buffers. What FSDP shards is each repeated block (the classes a transformers model lists
in `_no_split_modules`, else the children of the module list holding the most parameters) and the root,
as `wrap` says (WRAPS): "layers", the blocks and the root, as Accelerate and the transformers Trainer wrap
with FSDP2, where the root's own parameters (embeddings, final norm, head) stay gathered from the forward
to the backward (FSDP2 never reshards its root after the forward); "torchtitan", also the input
embeddings as a unit of their own and the final norm with the head as another, which stays gathered after
the forward (torchtitan's `apply_fsdp` by default); "all", the same units, every one resharded after its
forward, head too (torchtitan's "always"; DeepSpeed's ZeRO-3 releases each module's parameters after use).

ZeRO-1 (`optimizer_sharded`) shards the optimizer state alone: the parameters and gradients stay whole on
every rank, and torch's own ZeroRedundancyOptimizer gives each rank the state of its partition of the
parameters (whole tensors, assigned largest first to the least-loaded rank). The trace runs as the rank
whose partition holds the most bytes, the GPU that fills first.

The process group is this process's default group, made for the trace and destroyed by `release()`.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as dist

MAX_SHARD = 4096
WRAPS = ("layers", "torchtitan", "all")
WRAP_SAYS = {"layers": "each block, and the root holding the rest (gathered from forward to backward), as "
                       "Accelerate and the transformers Trainer wrap",
             "torchtitan": "the input embeddings, each block, the final norm with the head (kept gathered after "
                           "the forward) and the root, as torchtitan wraps",
             "all": "the input embeddings, each block, the final norm with the head and the root, every one "
                    "resharded after its forward (torchtitan's 'always'; as ZeRO-3 releases parameters)"}

_group: tuple[int, int] | None = None  # (world size, rank) of the fake process group this module made, if any


def fake_group(world: int, rank: int = 0) -> None:
    """Make this process rank `rank` of a fake process group of `world` ranks (collectives return at once)."""
    global _group
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if _group != (world, rank):
        release()
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
        _group = (world, rank)


def mesh(world: int):
    """A one-dimensional device mesh over a fake process group of `world` ranks (this process is rank 0)."""
    from torch.distributed.device_mesh import init_device_mesh

    fake_group(world)
    return init_device_mesh("cpu", (world,))


def made_the_group() -> bool:
    """The default process group is the fake one this module made for a trace (no job, no other rank)."""
    return _group is not None and dist.is_initialized()


def release() -> None:
    """Destroy the fake process group, if this module made one (never a real job's)."""
    global _group
    if _group is not None and dist.is_initialized():
        dist.destroy_process_group()
    _group = None


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


def outer_units(model: torch.nn.Module, blocks: list[torch.nn.Module]) -> tuple[list, list]:
    """(embeddings, tail): the modules with parameters outside the blocks (the outermost such, in the model's
    order), split into the input embeddings (each a unit of its own) and the rest (final norm, head: one
    unit). A module that shares a parameter with another (tied embeddings and head) stays with the root,
    which owns both."""
    block_ids = {id(b) for b in blocks}
    inside = {id(m) for b in blocks for m in b.modules()}
    outer: list[torch.nn.Module] = []

    def walk(module: torch.nn.Module) -> None:
        for child in module.children():
            if id(child) in inside or not any(True for _ in child.parameters()):
                continue
            if any(id(m) in block_ids for m in child.modules()):  # holds blocks: look further in
                walk(child)
            else:
                outer.append(child)

    walk(model)
    owners = Counter(id(p) for m in outer for p in m.parameters())
    untied = [m for m in outer if all(owners[id(p)] == 1 for p in m.parameters())]
    embeddings = [m for m in untied if isinstance(m, torch.nn.Embedding)]
    return embeddings, [m for m in untied if not isinstance(m, torch.nn.Embedding)]


def fully_sharded(world: int, reshard_after_forward: bool = True, wrap: str = "layers"):
    """A `prepare(model)` for StepTracer: the model under FSDP2 across `world` ranks, wrapped as `wrap` says."""
    from torch.distributed.fsdp import fully_shard

    device_mesh = mesh(world)  # made here, outside the trace's FakeTensorMode: it reads real rank tensors

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        blocks = shard_units(model)
        embeddings, tail = outer_units(model, blocks) if wrap != "layers" else ([], [])
        for unit in [*embeddings, *blocks]:
            fully_shard(unit, mesh=device_mesh, reshard_after_forward=reshard_after_forward)
        if tail:
            fully_shard(tail, mesh=device_mesh, reshard_after_forward=reshard_after_forward and wrap == "all")
        fully_shard(model, mesh=device_mesh, reshard_after_forward=reshard_after_forward)
        return model

    return prepare


def optimizer_sharded(world: int):
    """A `configure(optimizer)` for StepTracer: the file's optimizer under torch's ZeroRedundancyOptimizer
    (ZeRO-1) across `world` ranks, as the rank holding the most parameter bytes runs it."""
    fake_group(world)  # made here, outside the trace's FakeTensorMode

    def configure(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        zero = _zero_redundancy(opt)
        heaviest = max(range(world), key=lambda rank: (partition_bytes(zero, rank), -rank))
        if heaviest != dist.get_rank():
            with unset_fake_temporarily():
                fake_group(world, heaviest)
            zero = _zero_redundancy(opt)
        return zero

    return configure


def _zero_redundancy(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """`opt`'s parameter groups and settings, each rank stepping its partition with `opt`'s class."""
    import inspect

    from torch.distributed.optim import ZeroRedundancyOptimizer

    accepts = inspect.signature(type(opt).__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepts.values())
    # defaults the constructor does not take (AdamW's decoupled_weight_decay) stay in each group's settings
    settings = {k: v for k, v in opt.defaults.items() if takes_any or k in accepts}
    groups = [dict(group) for group in opt.param_groups]
    return ZeroRedundancyOptimizer(groups, optimizer_class=type(opt), **settings)


def partition_bytes(zero, rank: int) -> int:
    """The parameter bytes whose optimizer state `rank` holds under ZeroRedundancyOptimizer `zero`."""
    return sum(p.numel() * p.element_size() for group in zero._partition_parameters()[rank] for p in group["params"])
