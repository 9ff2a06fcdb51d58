"""The host this process runs on: how much memory the kernel can give a new workload, and how busy its
cores are with other work."""

import os
import time
from pathlib import Path

HOST_MEMORY_SOURCE = "host available memory (/proc/meminfo MemAvailable)"


def host_available_bytes() -> int:
    """MemAvailable: what the kernel can give a new workload without swapping."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def busy_cores(seconds: float = 0.2) -> float | None:
    """Cores' worth of CPU time that other processes use now: /proc/stat's busy time over `seconds`, less
    this process's own (torch's idle threads spin for a while after a step). None where /proc/stat cannot be
    read. The load average lags by a minute: a job started just before a probe showed load 0.3 on 2 cores
    while it kept one busy, the probe took two threads, and its steps waited on the other job."""
    try:
        before, own_before, started = _cpu_ticks(), _own_seconds(), time.monotonic()
        time.sleep(seconds)
        after, own_after, elapsed = _cpu_ticks(), _own_seconds(), time.monotonic() - started
    except (OSError, ValueError, IndexError):
        return None
    busy = (after - before) / os.sysconf("SC_CLK_TCK")
    return max(0.0, busy - (own_after - own_before)) / elapsed


def _cpu_ticks() -> int:
    """The busy clock ticks of all cores since boot, from /proc/stat's first line: all but idle and iowait."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4]


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system
