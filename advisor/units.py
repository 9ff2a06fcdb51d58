"""Byte sizes: parsing what users type and printing what we measured."""

import math
import re

from advisor.errors import BadInput

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """'512MiB' -> 536870912, '12GB' -> 12000000000, '1e9' -> 1000000000. Must be positive."""
    match = _SIZE.match(text or "")
    unit = match.group(3).lower() if match else ""
    if not match or unit not in _UNITS:
        raise BadInput(f"cannot read {text!r} as a size: expected a number with an optional unit such as 512MiB or 12GB")
    value = float(match.group(1)) * 10 ** int(match.group(2) or 0) * _UNITS[unit]
    if not math.isfinite(value) or value < 1:
        raise BadInput(f"size {text!r} must be at least one byte")
    return int(value)


def format_bytes(n: float) -> str:
    """Binary units, three significant figures: 1536 -> "1.5 KiB"."""
    if n is None or not math.isfinite(n):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
