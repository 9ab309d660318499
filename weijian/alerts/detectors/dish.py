"""Dish machines (tunnel washers): exposure time in the disinfection zone and rinse temperature.

Exposure is derived, not measured: exposure = disinfection-zone length ÷ conveyor speed. Both
limits apply only while the machine runs; a stopped machine is neither compliant nor not.
A rinse below temperature is `disinfection.temperature_low` (the same rule as a cold cabinet
batch, on the dish machine's own alert), not a second flavour of exposure_short.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import NamedTuple

from weijian.alerts.detectors.common import (
    DeviceDetector,
    Horizon,
    LevelRule,
    Point,
    Spell,
    floor_to,
    level_findings,
    mmss,
    seconds,
)
from weijian.alerts.models import DeviceData, Finding, Profile, SiteData
from weijian.alerts.models import Severity as Sev
from weijian.alerts.rules import rule
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Reading

_METRICS = ("running", "conveyor_speed_m_min", "rinse_temp_c")


class DishState(NamedTuple):
    """What the machine was doing at one sample time (latest value of each metric)."""

    ts: datetime
    running: bool
    speed_m_min: float | None
    rinse_temp_c: float | None

    def exposure_s(self, zone_length_m: float) -> float | None:
        if self.speed_m_min is None:
            return None
        if self.speed_m_min <= 0:
            return math.inf  # a stopped belt keeps the dishes in the zone
        return 60.0 * zone_length_m / self.speed_m_min


def timeline(device: DeviceData, max_gap: timedelta) -> list[DishState]:
    """The machine's state at every sample time, holding each metric's last value for at most
    `max_gap`. Without a `running` flag, a moving belt counts as running. Read-only: shared by
    the detectors that ask for the same device and gap."""
    return device.memo(("dish-timeline", max_gap), lambda: _timeline(device, max_gap))


def _timeline(device: DeviceData, max_gap: timedelta) -> list[DishState]:
    if device.ordered:
        # Stored data: in device-time order, one row per (metric, ts). The order within one
        # time does not matter, every row of that time is taken before its state.
        index = device.metric_index()
        rows = sorted((r for m in _METRICS for r in index.get(m, ())), key=_by_ts)
    else:
        rows = sorted(
            (r for r in device.readings if r.metric in _METRICS), key=lambda r: (r.ts, r.seq or 0)
        )
    # Each metric's last (time, value); a value older than `max_gap` at a state is not held.
    # Plain locals rather than a dict and a call per metric: this runs over hours of samples.
    never = (datetime.min.replace(tzinfo=UTC), 0.0)
    speed_at, running_at, rinse_at = never, never, never
    states: list[DishState] = []
    last = len(rows) - 1
    for i, reading in enumerate(rows):
        ts = reading.ts
        metric = reading.metric
        if metric == "conveyor_speed_m_min":
            speed_at = (ts, reading.value)
        elif metric == "running":
            running_at = (ts, reading.value)
        else:
            rinse_at = (ts, reading.value)
        if i < last and rows[i + 1].ts == ts:
            continue  # the rest of the same message first
        speed = speed_at[1] if ts - speed_at[0] <= max_gap else None
        running = running_at[1] if ts - running_at[0] <= max_gap else None
        rinse = rinse_at[1] if ts - rinse_at[0] <= max_gap else None
        is_running = running >= 0.5 if running is not None else (speed or 0.0) > 0
        states.append(DishState(ts, is_running, speed, rinse))
    return states


def _by_ts(reading: Reading) -> datetime:
    return reading.ts


@dataclass(frozen=True)
class DishLimits:
    min_exposure_s: float
    min_rinse_temp_c: float
    zone_length_m: float
    max_gap: timedelta

    @classmethod
    def of(cls, profile: Profile, device_id: str) -> DishLimits:
        return cls(
            profile.number("dish.min_exposure_s", device_id),
            profile.number("dish.min_rinse_temp_c", device_id),
            profile.number("dish.zone_length_m", device_id),
            seconds(profile.number("hold.max_sample_gap_s", device_id)),
        )

    def exposure_point(self, state: DishState) -> Point:
        exposure = state.exposure_s(self.zone_length_m)
        if not state.running or exposure is None:
            return Point(state.ts, math.nan, None)
        return Point(state.ts, exposure, exposure < self.min_exposure_s)

    def rinse_point(self, state: DishState) -> Point:
        if not state.running or state.rinse_temp_c is None:
            return Point(state.ts, math.nan, None)
        return Point(state.ts, state.rinse_temp_c, state.rinse_temp_c < self.min_rinse_temp_c)


class _DishLevelDetector(DeviceDetector):
    """Shared horizon of the dish machine's level rules: any bad running sample fires."""

    def horizon(
        self, site: SiteData, device: DeviceData, since: datetime, now: datetime
    ) -> Horizon | None:
        # A state holds each metric's value for up to a gap, and a spell continues across gaps
        # up to one: states from start + gap on are exact, spells from start + 2 gaps whole.
        gap = DishLimits.of(site.profile, device.device_id).max_gap
        return Horizon(since - 3 * gap, 2 * gap)


class DishExposureDetector(_DishLevelDetector):
    """`disinfection.exposure_short`: while running, zone length ÷ belt speed < the minimum.

    Any running sample below the limit fires (the dishes on the belt at that moment were
    under-exposed); consecutive ones form one episode keyed by its first sample. The rule
    clears after the machine has run compliantly for one full exposure time.
    """

    rule = rule("disinfection.exposure_short")
    device_kinds = frozenset({DeviceKind.DISH_MACHINE})
    lookback = timedelta(hours=3)

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        limits = DishLimits.of(site.profile, device.device_id)
        level = LevelRule(
            spec=self.rule,
            metric="conveyor_speed_m_min",
            limit=limits.min_exposure_s,
            unit="s",
            severity=Sev.MAJOR,
            max_gap=limits.max_gap,
            clear_after=seconds(limits.min_exposure_s),
            clear_summary="洗碗机接触时间已恢复达标",
            window_start=now - self.lookback,
        )
        points = [limits.exposure_point(s) for s in timeline(device, limits.max_gap) if s.ts <= now]

        def describe(spell: Spell) -> tuple[float, str]:
            shortest = min(spell.values)
            speed = 60.0 * limits.zone_length_m / shortest
            return shortest, (
                f"洗碗机传送带速度 {speed:.2f} m/min 过快，消毒区接触时间 {shortest:.1f} s，"
                f"低于 {limits.min_exposure_s:g} s（持续 {mmss(spell.duration)}）"
            )

        return level_findings(level, site, device, points, describe)


class DishRinseDetector(_DishLevelDetector):
    """`disinfection.temperature_low` for dish machines: running with the rinse below limit."""

    rule = rule("disinfection.temperature_low")
    device_kinds = frozenset({DeviceKind.DISH_MACHINE})
    lookback = timedelta(hours=3)

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        limits = DishLimits.of(site.profile, device.device_id)
        level = LevelRule(
            spec=self.rule,
            metric="rinse_temp_c",
            limit=limits.min_rinse_temp_c,
            unit="°C",
            severity=Sev.MAJOR,
            max_gap=limits.max_gap,
            clear_after=seconds(limits.min_exposure_s),
            clear_summary="洗碗机消毒冲洗温度已恢复达标",
            window_start=now - self.lookback,
        )
        points = [limits.rinse_point(s) for s in timeline(device, limits.max_gap) if s.ts <= now]

        def describe(spell: Spell) -> tuple[float, str]:
            coldest = min(spell.values)
            return coldest, (
                f"洗碗机运行中消毒冲洗温度 {coldest:.1f} °C，低于 {limits.min_rinse_temp_c:g} °C"
                f"（持续 {mmss(spell.duration)}）"
            )

        return level_findings(level, site, device, points, describe)


# `compliant_between` judges a dish machine's states a chunk of device time at a time.
_CHUNK = timedelta(minutes=10)


def compliant_between(
    device: DeviceData, profile: Profile, now: datetime, lo: datetime, hi: datetime
) -> bool:
    """Whether one of `compliant_times` lies in [lo, hi]. The states are judged a chunk of
    time at a time from `hi` back, each chunk once per device and `now`, until one holds a
    compliant state in the interval: usually the first chunk does, so this costs minutes of
    data, not hours, and never more than judging every state once."""
    if not device.ordered:
        return any(lo <= t <= hi for t in compliant_times(device, profile, now))
    chunk = floor_to(min(hi, now), _CHUNK)
    while chunk + _CHUNK > lo:
        times = device.memo(
            ("dish-compliant", profile, chunk, now),
            partial(_compliant_in, device, profile, chunk, now),
        )
        if any(lo <= t <= hi for t in times):
            return True
        chunk -= _CHUNK
    return False


def _compliant_in(
    device: DeviceData, profile: Profile, chunk: datetime, now: datetime
) -> list[datetime]:
    """The compliant state times in [chunk, chunk + _CHUNK) (and up to `now`)."""
    limits = DishLimits.of(profile, device.device_id)
    readings = device.readings
    end = min(chunk + _CHUNK, now + timedelta(microseconds=1))
    i = bisect_left(readings, end, key=_by_ts) - 1
    found: list[datetime] = []
    while i >= 0 and readings[i].ts >= chunk:
        if readings[i].metric not in _METRICS:
            i -= 1
            continue
        state = _state_at(readings, i, limits.max_gap)
        if limits.exposure_point(state).bad is False and limits.rinse_point(state).bad is False:
            found.append(state.ts)
        while i >= 0 and readings[i].ts == state.ts:
            i -= 1  # the other rows of the same time belong to the same state
    return found


def running_at(device: DeviceData, ts: datetime, max_gap: timedelta) -> bool:
    """Whether `timeline(device, max_gap)` (stored data) holds a running state at `ts`, found
    from the rows up to `max_gap` before it rather than the whole timeline."""
    readings = device.readings
    last = bisect_right(readings, ts, key=_by_ts) - 1
    i = last
    while i >= 0 and readings[i].ts == ts:
        if readings[i].metric in _METRICS:
            return _state_at(readings, last, max_gap).running
        i -= 1
    return False  # no state at that time


def _state_at(readings: Sequence[Reading], i: int, max_gap: timedelta) -> DishState:
    """The state at readings[i].ts, readings[i] being the last row of that time: each metric's
    latest value at most `max_gap` old, as `_timeline` holds it."""
    ts = readings[i].ts
    values: dict[str, float] = {}
    while i >= 0 and len(values) < len(_METRICS):
        reading = readings[i]
        if ts - reading.ts > max_gap:
            break
        if reading.metric in _METRICS:
            values.setdefault(reading.metric, reading.value)
        i -= 1
    speed = values.get("conveyor_speed_m_min")
    running = values.get("running")
    is_running = running >= 0.5 if running is not None else (speed or 0.0) > 0
    return DishState(ts, is_running, speed, values.get("rinse_temp_c"))


def compliant_times(device: DeviceData, profile: Profile, now: datetime) -> list[datetime]:
    """Sample times at which the machine ran with both exposure and rinse compliant."""
    limits = DishLimits.of(profile, device.device_id)
    return [
        s.ts
        for s in timeline(device, limits.max_gap)
        if s.ts <= now
        and limits.exposure_point(s).bad is False
        and limits.rinse_point(s).bad is False
    ]
