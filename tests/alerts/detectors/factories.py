"""Small factories for detector tests: readings, events, devices and sites, no database."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from weijian.alerts.detectors.common import current_state
from weijian.alerts.models import DeviceData, Finding, SiteData
from weijian.alerts.profiles import build_profile
from weijian.devices.kinds import KINDS, DeviceKind
from weijian.telemetry import Event, Reading

# 2026-11-23 08:00 in Shanghai.
T0 = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)


def at(hours: float = 0, minutes: float = 0, seconds: float = 0) -> datetime:
    """T0 plus an offset."""
    return T0 + timedelta(hours=hours, minutes=minutes, seconds=seconds)


def stream(
    device_id: str,
    start: datetime,
    values: Mapping[str, Sequence[float]],
    *,
    step_s: float = 10,
    seq0: int | None = None,
    lag_s: float = 1.0,
) -> list[Reading]:
    """Messages every `step_s` carrying one value of each metric; seq counts up from `seq0`."""
    count = len(next(iter(values.values())))
    out: list[Reading] = []
    for i in range(count):
        ts = start + timedelta(seconds=i * step_s)
        seq = None if seq0 is None else seq0 + i
        for metric, series in values.items():
            out.append(
                Reading(ts, device_id, metric, float(series[i]), seq, ts + timedelta(seconds=lag_s))
            )
    return out


def constant(value: float, count: int) -> list[float]:
    return [value] * count


def event(
    device_id: str, ts: datetime, type_: str, *, seq: int | None = None, **data: Any
) -> Event:
    return Event(ts, device_id, type_, dict(data), seq, ts + timedelta(seconds=1))


def device(
    kind: DeviceKind,
    device_id: str = "d1",
    *,
    readings: Iterable[Reading] = (),
    events: Iterable[Event] = (),
    last_seen: datetime | None = None,
    online: bool | None = None,
) -> DeviceData:
    return DeviceData(device_id, kind, tuple(readings), tuple(events), last_seen, online)


def site(
    *devices: DeviceData,
    overrides: Mapping[str, Any] | None = None,
    device_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> SiteData:
    """A site of the kind of its first device, with default limits plus overrides."""
    kind = KINDS[devices[0].kind].site_kind
    profile = build_profile(kind, overrides, device_overrides)
    return SiteData("s1", kind, {d.device_id: d for d in devices}, profile)


def firing(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.state == "firing"]


def clears(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.state == "clear"]


def state(findings: Iterable[Finding], device_id: str = "d1") -> str | None:
    """What the alert of the device would be after these findings: firing, clear or None."""
    decided = [f for (dev, _), f in current_state(findings).items() if dev == device_id]
    return decided[0].state if decided else None
