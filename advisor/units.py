"""Byte sizes: parsing what users type, printing what we measured, and a budget of bytes with its source."""

import math
import re
from dataclasses import dataclass

from advisor.errors import BadInput

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([a-zA-Z]*)\s*$", re.ASCII)
_EXPECTED = "expected a number with an optional unit such as 512MiB, 12GB or 1e9"


def _shown(text) -> str:
    """The user's text, quoted, on one line and not too long to read."""
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def parse_size(text: str) -> int:
    """'512MiB' -> 536870912, '12GB' -> 12000000000, '1e9' -> 1000000000. Must be at least one byte.

    Raises BadInput with a one-line message for anything else; it never raises another error."""
    match = _SIZE.match(text) if isinstance(text, str) else None
    if not match:
        raise BadInput(f"cannot read {_shown(text)} as a size: {_EXPECTED}")
    sign, digits, exponent, unit = match.groups()
    if unit.lower() not in _UNITS:
        raise BadInput(f"cannot read {_shown(text)} as a size: unknown unit {unit!r}; "
                       "use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)")
    scale = _UNITS[unit.lower()]
    if not exponent and "." not in digits and len(digits) <= 100:
        value = int(digits) * scale  # exact
    else:
        value = float(f"{digits}e{exponent or 0}") * scale  # inf when it overflows, never OverflowError
        if not math.isfinite(value):
            raise BadInput(f"size {_shown(text)} is too large")
        value = int(value)
    if sign == "-" and value:
        raise BadInput(f"size {_shown(text)} must be positive")
    if value < 1:
        raise BadInput(f"size {_shown(text)} must be at least one byte")
    return value


def format_bytes(n: float) -> str:
    """Binary units, three significant figures: 1536 -> "1.5 KiB". "-" for None, NaN or infinity."""
    try:
        n = float(n)
    except (TypeError, ValueError, OverflowError):
        return "-"
    if not math.isfinite(n):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            # Whole numbers from 100 up: ".3g" would write 1000 KiB as "1e+03 KiB".
            return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 100 else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Budget:
    """Bytes a training step may use, and how that figure was obtained (shown next to it)."""

    bytes: int
    source: str
