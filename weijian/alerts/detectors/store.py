"""The waste store's environment: cold-storage temperature, UV disinfection and the door."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal

from weijian.alerts.detectors.common import (
    DeviceDetector,
    Horizon,
    LevelRule,
    Point,
    Spell,
    day_bounds,
    level_findings,
    local_day,
    local_time,
    mmss,
    seconds,
    series,
    settle,
    site_within,
)
from weijian.alerts.detectors.waste import Handover, ledger
from weijian.alerts.models import DeviceData, Finding, SiteData
from weijian.alerts.models import Severity as Sev
from weijian.alerts.rules import rule
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Reading

_ENV = frozenset({DeviceKind.WASTE_STORE_ENV})


def _max_gap(site: SiteData, device: DeviceData) -> timedelta:
    return seconds(site.profile.number("waste.max_sample_gap_s", device.device_id))


class ColdStorageDetector(DeviceDetector):
    """`waste.cold_storage_temp_high`, only where the profile requires cold storage.

    Fires on a spell at or above the limit (storage must stay *below* it) lasting at least
    `waste.temp_sustain_min`, so a single warm sample never fires; clears after the same time
    below the limit (symmetric hysteresis). Episode = start of the warm spell.
    """

    rule = rule("waste.cold_storage_temp_high")
    device_kinds = _ENV
    lookback = timedelta(hours=12)

    def horizon(
        self, site: SiteData, device: DeviceData, since: datetime, now: datetime
    ) -> Horizon | None:
        # A spell that newly lasted `sustain` began less than that (and a gap) before `since`.
        sustain = timedelta(minutes=site.profile.number("waste.temp_sustain_min", device.device_id))
        gap = _max_gap(site, device)
        return Horizon(since - sustain - 2 * gap, gap)

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        if not site.profile.get("waste.cold_storage_required", device.device_id):
            return []
        limit = site.profile.number("waste.max_temp_c", device.device_id)
        sustain = timedelta(minutes=site.profile.number("waste.temp_sustain_min", device.device_id))
        level = LevelRule(
            spec=self.rule,
            metric="temp_c",
            limit=limit,
            unit="°C",
            severity=Sev.MAJOR,
            max_gap=_max_gap(site, device),
            min_duration=sustain,
            clear_after=sustain,
            clear_summary=f"暂存间温度已恢复至 {limit:g} °C 以下",
            window_start=now - self.lookback,
        )
        points = [Point(r.ts, r.value, r.value >= limit) for r in series(device, "temp_c")]

        def describe(spell: Spell) -> tuple[float, str]:
            warmest = max(spell.values)
            return warmest, (
                f"暂存间温度 ≥ {limit:g} °C 已持续 {mmss(spell.duration)}，最高 {warmest:.1f} °C"
                f"（要求低于 {limit:g} °C）"
            )

        return level_findings(level, site, device, [p for p in points if p.ts <= now], describe)


class DoorOpenDetector(DeviceDetector):
    """`waste.door_open_long`: door_open=1 provably continuously for more than the limit.

    Duration runs from the first to the last open sample (a gap longer than
    `waste.max_sample_gap_s` breaks it: continuity is not proven across lost data or a clock
    jump). Episode = start of the open spell; a closed sample clears.
    """

    rule = rule("waste.door_open_long")
    device_kinds = _ENV
    lookback = timedelta(days=2)

    def horizon(
        self, site: SiteData, device: DeviceData, since: datetime, now: datetime
    ) -> Horizon | None:
        # A spell that newly lasted the limit began less than that (and a gap) before `since`.
        limit = timedelta(minutes=site.profile.number("waste.max_door_open_min", device.device_id))
        gap = _max_gap(site, device)
        return Horizon(since - limit - 2 * gap, gap)

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        limit_min = site.profile.number("waste.max_door_open_min", device.device_id)
        level = LevelRule(
            spec=self.rule,
            metric="door_open",
            limit=limit_min,
            unit="min",
            severity=Sev.WARNING,
            max_gap=_max_gap(site, device),
            min_duration=timedelta(minutes=limit_min),
            strictly_longer=True,
            clear_summary="暂存间门已关闭",
            window_start=now - self.lookback,
        )
        points = [Point(r.ts, r.value, r.value >= 0.5) for r in series(device, "door_open")]

        def describe(spell: Spell) -> tuple[float, str]:
            state = "仍未关闭" if spell.end is None else "现已关闭"
            return spell.duration.total_seconds() / 60.0, (
                f"暂存间门自 {local_time(spell.first)} 起持续打开 {mmss(spell.duration)}，"
                f"超过 {limit_min:g} 分钟，{state}"
            )

        return level_findings(level, site, device, [p for p in points if p.ts <= now], describe)


def on_time(
    samples: Sequence[Reading], start: datetime, end: datetime, max_gap: timedelta
) -> timedelta:
    """Time a 0/1 flag was on within [start, end): each sample holds until the next one, but
    never longer than `max_gap` (lost data is not counted as on)."""
    total = timedelta(0)
    for i, sample in enumerate(samples):
        if sample.value < 0.5:
            continue
        until = sample.ts + max_gap
        if i + 1 < len(samples):
            until = min(until, samples[i + 1].ts)
        lo, hi = max(sample.ts, start), min(until, end)
        if hi > lo:
            total += hi - lo
    return total


class UvDetector:
    """`waste.uv_not_done`, two checks on each store's UV lamp (`uv_on`):

    - per calendar day (Asia/Shanghai), judged once the day is over: on-time below
      `waste.min_uv_min_per_day`; episode = the date (e.g. "2026-11-23");
    - after each hand-over of the site's scales: on-time within `waste.uv_after_handover_h`
      below `waste.min_uv_min_after_handover`; judged once that window is over; episode =
      "handover:<manifest>".

    A period the `uv_on` data do not cover from start to end (within `waste.max_sample_gap_s`)
    gets no verdict (device.offline speaks to that). Each compliant period is a clear for its
    own episode.
    """

    rule = rule("waste.uv_not_done")
    device_kinds = frozenset({DeviceKind.WASTE_STORE_ENV, DeviceKind.WASTE_SCALE})
    # Enough to hold yesterday whole at any time of today.
    lookback = timedelta(hours=49)
    scope: Literal["device", "site"] = "site"

    def __call__(self, site: SiteData, now: datetime) -> list[Finding]:
        site = site_within(site, self.device_kinds, now - self.lookback, now)
        handovers = [
            h
            for scale in site.of_kind(DeviceKind.WASTE_SCALE)
            for h in ledger(scale.events, now).handovers
        ]
        findings: list[Finding] = []
        for device in site.of_kind(DeviceKind.WASTE_STORE_ENV):
            samples = [r for r in series(device, "uv_on") if r.ts <= now]
            judged = self._days(site, device, samples, now)
            judged += self._handovers(site, device, samples, handovers, now)
            findings += settle(judged)
        return findings

    def _days(
        self, site: SiteData, device: DeviceData, samples: list[Reading], now: datetime
    ) -> list[Finding]:
        need = timedelta(minutes=site.profile.number("waste.min_uv_min_per_day", device.device_id))
        findings: list[Finding] = []
        day = local_day(now - self.lookback)
        while day_bounds(day)[1] <= now:
            start, end = day_bounds(day)
            if start >= now - self.lookback:  # whole days only
                label = day.isoformat()
                findings += self._period(
                    site, device, samples, period=(start, end), need=need, episode=label
                )
            day += timedelta(days=1)
        return findings

    def _handovers(
        self,
        site: SiteData,
        device: DeviceData,
        samples: list[Reading],
        handovers: list[Handover],
        now: datetime,
    ) -> list[Finding]:
        profile, dev = site.profile, device.device_id
        window = timedelta(hours=profile.number("waste.uv_after_handover_h", dev))
        need = timedelta(minutes=profile.number("waste.min_uv_min_after_handover", dev))
        findings: list[Finding] = []
        for handover in handovers:
            if handover.ts + window <= now:
                period = (handover.ts, handover.ts + window)
                label = f"handover:{handover.episode}"
                findings += self._period(
                    site, device, samples, period=period, need=need, episode=label
                )
        return findings

    def _period(
        self,
        site: SiteData,
        device: DeviceData,
        samples: list[Reading],
        *,
        period: tuple[datetime, datetime],
        need: timedelta,
        episode: str,
    ) -> list[Finding]:
        start, end = period
        max_gap = _max_gap(site, device)
        inside = [r.ts for r in samples if start <= r.ts < end]
        if not inside or inside[0] - start > max_gap or end - inside[-1] > max_gap:
            return []  # the data do not cover the period: no verdict either way
        lit = on_time(samples, start, end, max_gap)
        short = lit < need
        if episode.startswith("handover:"):
            hours = (end - start).total_seconds() / 3600
            what = f"交接（联单 {episode.removeprefix('handover:')}）后 {hours:g} 小时内"
        else:
            what = f" {episode} 全天"
        minutes = lit.total_seconds() / 60
        summary = (
            f"暂存间{what}紫外线灯累计开启 {int(minutes)} 分钟，"
            f"要求 ≥ {need.total_seconds() / 60:g} 分钟"
            if short
            else f"暂存间{what}紫外线消毒已落实"
        )
        return [
            Finding(
                rule=self.rule.id,
                site_id=site.site_id,
                device_id=device.device_id,
                state="firing" if short else "clear",
                severity=Sev.WARNING,
                started_at=start,
                ended_at=end,
                value=round(lit.total_seconds() / 60.0, 2),
                limit=need.total_seconds() / 60.0,
                unit="min",
                summary=summary,
                evidence_from=start,
                evidence_to=end,
                evidence_metric="uv_on",
                episode=episode,
            )
        ]
