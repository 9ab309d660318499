"""Durations and instants as the simulator writes and reads them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

LOCAL_TZ = ZoneInfo("Asia/Shanghai")

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|d|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> timedelta:
    """`90`, `"90s"`, `"15m"`, `"1h30m"`, `"2d"`, `"-30s"` (a plain number is seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return timedelta(seconds=float(value))
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r}")
    text = value.strip().replace(" ", "")
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"not a duration: {value!r} (write e.g. 90s, 15m, 1h30m, 2d)")
    seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    return timedelta(seconds=sign * seconds)


def format_duration(span: timedelta) -> str:
    """The inverse of parse_duration for whole seconds, e.g. `1h30m`."""
    total = int(span.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            out += f"{total // size}{unit}"
            total %= size
    return sign + (out or "0s")


def to_epoch(when: datetime) -> float:
    """Seconds since the epoch of an aware datetime."""
    return when.timestamp()


def from_epoch(seconds: float) -> datetime:
    """An aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def rfc3339_local(seconds: float) -> str:
    """RFC 3339 in local time (+08:00), milliseconds only when not whole seconds."""
    when = datetime.fromtimestamp(seconds, LOCAL_TZ)
    spec = "seconds" if when.microsecond < 1000 else "milliseconds"
    return when.isoformat(timespec=spec)


def local_midnight(seconds: float) -> float:
    """The epoch of local midnight (Asia/Shanghai) starting the day that contains `seconds`."""
    day = datetime.fromtimestamp(seconds, LOCAL_TZ).date()
    return datetime(day.year, day.month, day.day, tzinfo=LOCAL_TZ).timestamp()


def local_hour(seconds: float) -> float:
    """Hour of the local day as a float (0 ≤ h < 24)."""
    return (seconds - local_midnight(seconds)) / 3600.0


def parse_clock(text: str) -> float:
    """`"05:30"` → hours since midnight (5.5)."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not match or int(match[1]) > 24 or int(match[2]) > 59:
        raise ValueError(f"not a clock time: {text!r} (write HH:MM)")
    return int(match[1]) + int(match[2]) / 60.0
