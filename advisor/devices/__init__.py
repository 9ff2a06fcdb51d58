"""Devices as backends: which kinds exist, and `resolve_device`, the one factory the probes get theirs from.

Each kind is a module here with `KIND`, `available()`, `open_device(index, asked)` (a Backend, or a
DeviceUnavailable naming what is missing) and `rank_limit()`. `auto` takes the first available in
AUTO_ORDER. A new kind of device is one more module and one more entry in KINDS.
"""

from __future__ import annotations

import re

from advisor.devices import cpu, cuda, mps
from advisor.devices.base import Backend, Peak
from advisor.errors import BadInput

KINDS = {module.KIND: module for module in (cpu, cuda, mps)}
AUTO_ORDER = ("cuda", "mps", "cpu")
_NAME = re.compile(r"^(auto|" + "|".join(KINDS) + r")(?::(\d+))?$")

__all__ = ["Backend", "Peak", "resolve_device", "resolve_rank_device", "rank_limit", "KINDS"]


def _parsed(name: str) -> tuple[str, int | None]:
    match = _NAME.match((name or "").strip().lower())
    if not match:
        raise BadInput(f"--device {name!r}: unknown device; expected auto, {', '.join(KINDS)} or cuda:N")
    return match.group(1), None if match.group(2) is None else int(match.group(2))


def resolve_device(name: str) -> Backend:
    """`auto` | `cpu` | `cuda[:N]` | `mps` -> a Backend, or a clear error (exit 2 or 3). `auto` takes the first
    accelerator available (CUDA, then MPS), else the CPU with a note saying why."""
    kind, index = _parsed(name)
    if kind != "auto":
        return KINDS[kind].open_device(index, name)
    for candidate in AUTO_ORDER:
        if candidate != "cpu" and KINDS[candidate].available():
            return KINDS[candidate].open_device(index, name, auto=True)
    return cpu.CpuBackend(note="no CUDA device found: measuring on the CPU")


def resolve_rank_device(name: str, local_rank: int) -> Backend:
    """In a data-parallel job: the device asked for, and where there are several, this rank's after it."""
    return resolve_device(name).for_rank(local_rank)


def rank_limit(name: str) -> tuple[int, str, str]:
    """How many ranks of a data-parallel job this machine can host on the device `name` (one per GPU, one per
    CPU core), with the plural and singular nouns a message names them by."""
    kind, _ = _parsed(name)
    if kind == "auto":
        kind = next(k for k in AUTO_ORDER if k == "cpu" or KINDS[k].available())
    return KINDS[kind].rank_limit()
