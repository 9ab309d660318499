"""Thermal disinfection batches (steam and infrared cabinets): temperature and hold time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from weijian.alerts.models import DeviceData, Finding, RuleSpec, Severity, SiteData
from weijian.alerts.rules import rule
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Reading

_PREFIX = {DeviceKind.STEAM_CABINET: "steam", DeviceKind.INFRARED_CABINET: "infrared"}


@dataclass(frozen=True)
class Batch:
    """One disinfection batch: the span between a batch_start and its batch_end."""

    batch_id: str
    start: datetime
    end: datetime


def batches(device: DeviceData) -> list[Batch]:
    """Closed batches of a cabinet, pairing each batch_end with the latest batch_start before it."""
    found: list[Batch] = []
    open_start: datetime | None = None
    open_id: str | None = None
    for event in sorted(device.events, key=lambda e: e.ts):
        if event.type == "batch_start":
            open_start, open_id = event.ts, _batch_id(event.data)
        elif event.type == "batch_end" and open_start is not None:
            batch_id = _batch_id(event.data) or open_id or open_start.isoformat()
            found.append(Batch(batch_id, open_start, event.ts))
            open_start, open_id = None, None
    return found


def _batch_id(data: object) -> str | None:
    if isinstance(data, dict) and data.get("batch_id") is not None:
        return str(data["batch_id"])
    return None


def longest_hold(samples: Sequence[Reading], limit: float, max_gap: timedelta) -> timedelta:
    """Longest provable continuous time at or above `limit`.

    A run starts at the first sample at/above the limit and ends at the last consecutive one;
    a sample below the limit, or a gap between samples longer than `max_gap`, ends the run.
    Only time between two samples both at temperature counts, so a hold is never overstated.
    """
    best = timedelta(0)
    run_start: datetime | None = None
    previous: datetime | None = None
    for sample in samples:
        at_temp = sample.value >= limit
        if at_temp and run_start is not None and previous is not None:
            if sample.ts - previous > max_gap:
                run_start = sample.ts
        elif at_temp:
            run_start = sample.ts
        else:
            run_start = None
        if run_start is not None:
            best = max(best, sample.ts - run_start)
        previous = sample.ts
    return best


class ThermalBatchDetector:
    """Checks every closed batch of steam/infrared cabinets: peak temperature and hold time.

    A batch that never reaches the limit is `disinfection.temperature_low`; one that reaches it
    but does not hold it long enough is `disinfection.hold_time_short`. A compliant batch is
    evidence that clears both rules for the cabinet.
    """

    device_kinds = frozenset({DeviceKind.STEAM_CABINET, DeviceKind.INFRARED_CABINET})
    lookback = timedelta(hours=3)

    def __init__(self, rule_id: str) -> None:
        self.rule: RuleSpec = rule(rule_id)

    def __call__(self, site: SiteData, now: datetime) -> list[Finding]:
        findings: list[Finding] = []
        for device in site.of_kind(*self.device_kinds):
            findings.extend(self._device(site, device, now))
        return findings

    def _device(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        prefix = _PREFIX[device.kind]
        limit = site.profile.number(f"{prefix}.min_temp_c", device.device_id)
        min_hold = timedelta(seconds=site.profile.number(f"{prefix}.min_hold_s", device.device_id))
        max_gap = timedelta(seconds=site.profile.number("hold.max_sample_gap_s", device.device_id))
        temps = sorted(device.series("temp_c"), key=lambda r: r.ts)
        findings: list[Finding] = []
        for batch in batches(device):
            if batch.end > now:
                continue
            inside = [r for r in temps if batch.start <= r.ts <= batch.end]
            if not inside:
                continue  # no data for the batch: the data-integrity rules speak to that
            peak = max(r.value for r in inside)
            hold = longest_hold(inside, limit, max_gap)
            verdict = self._verdict(peak, limit, hold, min_hold)
            common = {
                "rule": self.rule.id,
                "site_id": site.site_id,
                "device_id": device.device_id,
                "started_at": batch.start,
                "ended_at": batch.end,
                "evidence_from": batch.start,
                "evidence_to": batch.end,
                "evidence_metric": "temp_c",
                "episode": batch.batch_id,
                "details": {
                    "batch_id": batch.batch_id,
                    "peak_temp_c": round(peak, 2),
                    "hold_s": hold.total_seconds(),
                    "min_temp_c": limit,
                    "min_hold_s": min_hold.total_seconds(),
                },
            }
            if verdict != self.rule.id:
                findings.append(Finding(state="clear", **common))  # type: ignore[arg-type]
                continue
            if self.rule.id == "disinfection.temperature_low":
                value, bound, unit = peak, limit, "°C"
                summary = f"批次 {batch.batch_id} 最高温度 {peak:.1f} °C，低于 {limit:g} °C"
            else:
                value, bound, unit = hold.total_seconds(), min_hold.total_seconds(), "s"
                summary = (
                    f"批次 {batch.batch_id} 在 ≥{limit:g} °C 仅保持 {_mmss(hold)}，"
                    f"要求 ≥ {_mmss(min_hold)}"
                )
            findings.append(
                Finding(
                    state="firing",
                    severity=Severity.MAJOR,
                    value=value,
                    limit=bound,
                    unit=unit,
                    summary=summary,
                    **common,  # type: ignore[arg-type]
                )
            )
        return findings

    @staticmethod
    def _verdict(peak: float, limit: float, hold: timedelta, min_hold: timedelta) -> str | None:
        if peak < limit:
            return "disinfection.temperature_low"
        if hold < min_hold:
            return "disinfection.hold_time_short"
        return None


def _mmss(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    return f"{seconds // 60}:{seconds % 60:02d}"
