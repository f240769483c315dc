"""Parsing of the human units the config file uses: sizes, durations, rates.

Sizes follow IEC/SI strictly: ``KB``/``MB``/``GB`` are powers of 1000 and
``KiB``/``MiB``/``GiB`` powers of 1024, so ``1MB`` means 1,000,000 bytes.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_RATE_PERIODS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_RATE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(?:msg|msgs|messages?)?\s*/\s*([a-z]+)\s*(?:/\s*([a-z]+)\s*)?$",
    re.IGNORECASE,
)


class UnitError(ValueError):
    """A value that is not a valid size, duration or rate."""


def parse_size(value: object) -> int:
    """``1MB`` -> 1000000, ``1MiB`` -> 1048576, ``512`` -> 512 (bytes)."""
    if isinstance(value, bool):
        raise UnitError("expected a size such as 1MB or 512KiB")
    if isinstance(value, int):
        if value < 0:
            raise UnitError("a size cannot be negative")
        return value
    match = _SIZE.match(str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise UnitError("expected a size such as 1MB (1000-based) or 1MiB (1024-based)")
    number, unit = float(match.group(1)), match.group(2).lower()
    size = number * _SIZE_UNITS[unit]
    if size != int(size):
        raise UnitError("a size must come to a whole number of bytes")
    return int(size)


def parse_duration(value: object) -> float:
    """``24h`` -> 86400.0, ``30d``, ``5s``, ``250ms``; a bare number is seconds."""
    if isinstance(value, bool):
        raise UnitError("expected a duration such as 30s, 24h or 30d")
    if isinstance(value, int | float):
        if value < 0:
            raise UnitError("a duration cannot be negative")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise UnitError("expected a duration such as 30s, 24h or 30d")
    unit = match.group(2).lower() or "s"
    if unit not in _DURATION_UNITS:
        raise UnitError(f"unknown duration unit {match.group(2)!r}; use ms, s, m, h, d or w")
    return float(match.group(1)) * _DURATION_UNITS[unit]


def parse_rate(value: object) -> tuple[float, str]:
    """``100 msg/min/session`` -> (100 per minute, scope "session").

    Returns the rate in messages per minute and the scope the text named
    (``session`` when none was given).
    """
    match = _RATE.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise UnitError("expected a rate such as '100 msg/min/session'")
    count = float(match.group(1))
    period = match.group(2).lower()
    if period not in _RATE_PERIODS:
        raise UnitError(f"unknown rate period {match.group(2)!r}; use s, min or hour")
    scope = (match.group(3) or "session").lower()
    if scope not in ("session", "agent"):
        raise UnitError(f"unknown rate scope {scope!r}; use session or agent")
    if count <= 0:
        raise UnitError("a rate must be positive")
    return count * 60 / _RATE_PERIODS[period], scope


def format_size(size: int) -> str:
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def format_duration(seconds: float) -> str:
    """The largest whole unit, as people write it: ``10m``, ``24h``, ``30d``.

    A day is written in hours (``24h``, ``36h``): that is how a timeout is given, and
    ``1d`` reads like a retention period.
    """
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            if unit == "d" and seconds < 2 * factor:
                continue
            return f"{int(seconds // factor)}{unit}"
    return f"{seconds:g}s"
