"""Sizes and durations as people write them in recipes and cluster profiles."""

from __future__ import annotations

import re

SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)\s*$", re.IGNORECASE)
HMS_RE = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")
_UNITS = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def size_bytes(text: str) -> int:
    """``"4GB"`` -> 4e9, ``"1.5GiB"`` -> 1.5 * 2**30; ValueError otherwise."""
    m = SIZE_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size like 4GB, 512MB or 1.5GiB")
    unit = m.group(2).lower()
    scale = 1024 ** ("kmgt".index(unit[0]) + 1) if "i" in unit else _UNITS[unit[0]]
    return int(float(m.group(1)) * scale)


def seconds(hms: str) -> int:
    """``"01:30:00"`` -> 5400 (hours may exceed 24); ValueError otherwise."""
    m = HMS_RE.match(hms.strip())
    if not m:
        raise ValueError(f"{hms!r} is not HH:MM:SS")
    h, mi, s = (int(x) for x in m.groups())
    return h * 3600 + mi * 60 + s
