"""Presence: a device the platform has not heard from for too long is offline."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import replace
from datetime import datetime, timedelta

from weijian.alerts.detectors.common import DeviceDetector, iso, local_time, mmss, stamps
from weijian.alerts.models import DeviceData, Finding, SiteData
from weijian.alerts.models import Severity as Sev
from weijian.alerts.rules import rule
from weijian.devices.kinds import DeviceKind, kind_spec


def reporting_interval(site: SiteData, device: DeviceData) -> float:
    """The device's reporting interval in seconds: the kind's unless the profile sets
    `offline.interval_s` (site-wide or for the device; the platform sets each device's
    registered interval there)."""
    interval = site.profile.get("offline.interval_s", device.device_id)
    return float(kind_spec(device.kind).interval_s if interval is None else interval)


def offline_after(site: SiteData, device: DeviceData) -> timedelta:
    """max(factor × reporting interval, floor)."""
    profile, dev = site.profile, device.device_id
    factor = profile.number("offline.interval_factor", dev)
    floor = profile.number("offline.min_s", dev)
    return timedelta(seconds=max(factor * reporting_interval(site, device), floor))


def receive_times(device: DeviceData) -> list[datetime]:
    """When the platform received each message (device time if the receive time is missing).
    Read-only: shared by the detectors that ask for the same device."""

    def compute() -> list[datetime]:
        return sorted({received or ts for ts, _, received in stamps(device)})

    return device.memo("receive_times", compute)


class OfflineDetector(DeviceDetector):
    """`device.offline`: silent for at least max(3 × interval, 10 min), judged on receive time
    (`DeviceData.last_seen`, else the latest receive time in the data) — never on device time,
    so a backlog arriving late and out of order counts as presence, and a wrong device clock
    cannot fake it. A Last-Will `online=false` does not shorten the wait (it flaps on brief
    reconnects); a stale retained `online=true` does not lengthen it. Devices that only send
    events (the waste scale) are silent by design between bags: for them only a broker
    `online=false` plus the silence counts, and `online=true` is presence.

    Episode = the last-seen time (fixed while silent); severity rises from warning to major
    after `offline.major_after_h`. Back online clears, naming the outage it ended when the
    data show it (the episode of that outage's firing).
    """

    rule = rule("device.offline")
    device_kinds = frozenset(DeviceKind)
    # Only to name the outage a recovery ends; presence itself comes from last_seen.
    lookback = timedelta(hours=2)
    by_device_time = False  # presence is receive time: a late backlog is presence

    def _device_findings(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        if site.since(self.rule.id, device.device_id) is not None and _present(site, device, now):
            # No alert of the rule is active for the device (`SiteData.since`) and it is not
            # silent: the judgement would be a clear with nothing to resolve. Skips sorting
            # the receive times of its whole lookback on every stream round.
            return []
        return super()._device_findings(site, device, now)

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        times = receive_times(device)  # sorted
        heard = times[bisect_left(times, now - self.lookback) : bisect_right(times, now)]
        seen = [t for t in (device.last_seen, heard[-1] if heard else None) if t is not None]
        event_only = not kind_spec(device.kind).metrics
        if event_only and device.online is False and device.status_at is not None:
            # Connected, it was present until the broker reported it gone.
            seen.append(device.status_at)
        if not seen:
            return []  # never heard from: nothing to measure silence from
        last_seen = max(seen)
        limit = offline_after(site, device)
        silent = now - last_seen
        if event_only and device.online is not False:
            if device.online is None and silent >= limit:
                return []  # event-only and quiet, connection unknown: no evidence either way
            silent = timedelta(0)
        base = Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=device.device_id,
            state="clear",
            severity=Sev.WARNING,
            value=silent.total_seconds(),
            limit=limit.total_seconds(),
            unit="s",
        )
        if silent >= limit:
            major = timedelta(hours=site.profile.number("offline.major_after_h", device.device_id))
            summary = f"设备自 {local_time(last_seen)} 起已 {mmss(silent)} 未上报数据"
            return [
                replace(
                    base,
                    state="firing",
                    severity=Sev.MAJOR if silent >= major else Sev.WARNING,
                    started_at=last_seen,
                    summary=f"{summary}（阈值 {mmss(limit)}）",
                    evidence_from=last_seen,
                    evidence_to=now,
                    episode=iso(last_seen),
                    details={"online_flag": device.online},
                )
            ]
        outage = _last_outage([t for t in heard if t <= last_seen], limit)
        return [
            replace(
                base,
                summary="设备已恢复上报",
                evidence_from=outage[1] if outage else last_seen,
                evidence_to=last_seen,
                episode=iso(outage[0]) if outage else f"online@{iso(last_seen)}",
                details={"online_flag": device.online},
            )
        ]


def _present(site: SiteData, device: DeviceData, now: datetime) -> bool:
    """Whether `judge` would find the device present without looking at its data: heard from
    (`last_seen`) within the limit, or event-only and not reported gone by the broker. The
    data can only make it later (`judge` takes the latest of both), never silent."""
    if not kind_spec(device.kind).metrics and device.online is not False:
        return True
    return device.last_seen is not None and now - device.last_seen < offline_after(site, device)


def _last_outage(heard: list[datetime], limit: timedelta) -> tuple[datetime, datetime] | None:
    """The latest silence of at least `limit` between two receive times: (last before, first
    after)."""
    for before, after in zip(reversed(heard[:-1]), reversed(heard[1:]), strict=True):
        if after - before >= limit:
            return before, after
    return None
