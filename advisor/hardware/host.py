"""The host this process runs on: how much memory the kernel can give a new workload."""

import os
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
