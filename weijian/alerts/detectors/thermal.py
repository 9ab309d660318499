"""Thermal disinfection batches (steam and infrared cabinets): temperature and hold time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from weijian.alerts.detectors.common import (
    DeviceDetector,
    Horizon,
    between,
    mmss,
    seconds,
    series,
)
from weijian.alerts.models import DeviceData, Finding, Profile, RuleSpec, Severity, SiteData
from weijian.alerts.rules import rule
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Event, Reading

_PREFIX = {DeviceKind.STEAM_CABINET: "steam", DeviceKind.INFRARED_CABINET: "infrared"}
CABINETS = frozenset(_PREFIX)


@dataclass(frozen=True)
class Batch:
    """One disinfection batch: the span between a batch_start and its batch_end."""

    batch_id: str
    start: datetime
    end: datetime
    # The counter (`seq`) of the batch_start and batch_end events, when they carry one.
    start_seq: int | None = None
    end_seq: int | None = None


def batches(device: DeviceData) -> list[Batch]:
    """Closed batches of a cabinet, pairing each batch_end with the latest batch_start before it.
    Read-only: shared by the detectors that ask for the same device."""
    return device.memo("batches", lambda: _batches(device))


def _batches(device: DeviceData) -> list[Batch]:
    found: list[Batch] = []
    opened: Event | None = None
    for event in sorted(device.events, key=lambda e: e.ts):
        if event.type == "batch_start":
            opened = event
        elif event.type == "batch_end" and opened is not None:
            batch_id = _batch_id(event.data) or _batch_id(opened.data) or opened.ts.isoformat()
            found.append(Batch(batch_id, opened.ts, event.ts, opened.seq, event.seq))
            opened = None
    return found


def complete(device: DeviceData, batch: Batch) -> bool:
    """Whether every message the cabinet sent between the batch's start and end events is
    stored: the counter is shared by readings and events and rises by one per item, so the
    batch's data are whole when each seq between the two events' is present. False when
    that cannot be shown (no seqs, a reboot restarting the counter, a message still on its
    way or lost)."""
    if batch.start_seq is None or batch.end_seq is None or batch.end_seq <= batch.start_seq:
        return False
    wanted = batch.end_seq - batch.start_seq - 1
    lo, hi = batch.start_seq, batch.end_seq
    seen = {
        r.seq
        for r in between(device.readings, batch.start, batch.end)
        if r.seq is not None and lo < r.seq < hi
    }
    seen.update(e.seq for e in device.events if e.seq is not None and lo < e.seq < hi)
    return len(seen) == wanted


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


@dataclass(frozen=True)
class BatchJudgement:
    """A closed batch measured against the cabinet's limits."""

    batch: Batch
    peak: float
    hold: timedelta
    limit: float
    min_hold: timedelta

    @property
    def verdict(self) -> str | None:
        """The rule the batch breaks (temperature first), or None when compliant."""
        if self.peak < self.limit:
            return "disinfection.temperature_low"
        if self.hold < self.min_hold:
            return "disinfection.hold_time_short"
        return None


def judge_batches(device: DeviceData, profile: Profile, now: datetime) -> list[BatchJudgement]:
    """Every closed batch of a cabinet that has temperature data, judged."""
    return [j for b in batches(device) if (j := judge_batch(device, profile, b, now)) is not None]


def judge_batch(
    device: DeviceData, profile: Profile, batch: Batch, now: datetime
) -> BatchJudgement | None:
    """One batch of the cabinet judged, or None when it cannot be yet (or has no data).
    Memoised per device, batch and `now`."""
    return device.memo(
        ("batch", profile, batch, now), lambda: _judge_batch(device, profile, batch, now)
    )


def _judge_batch(
    device: DeviceData, profile: Profile, batch: Batch, now: datetime
) -> BatchJudgement | None:
    prefix = _PREFIX[device.kind]
    limit = profile.number(f"{prefix}.min_temp_c", device.device_id)
    min_hold = seconds(profile.number(f"{prefix}.min_hold_s", device.device_id))
    max_gap = seconds(profile.number("hold.max_sample_gap_s", device.device_id))
    settle = seconds(profile.number("hold.settle_s", device.device_id))
    temps = series(device, "temp_c")
    latest = temps[-1].ts if temps else None
    if batch.end > now:
        return None
    # Events and readings travel separately (and backlogs arrive in pieces): judge a batch
    # once all it sent is stored (its counter has no hole), a reading from its end on is,
    # or `hold.settle_s` has passed.
    if (
        (latest is None or latest < batch.end)
        and now - batch.end < settle
        and not complete(device, batch)
    ):
        return None
    inside = between(temps, batch.start, batch.end)
    if not inside:
        return None  # no data for the batch: the data-integrity rules speak to that
    peak = max(r.value for r in inside)
    hold = longest_hold(inside, limit, max_gap)
    return BatchJudgement(batch, peak, hold, limit, min_hold)


class ThermalBatchDetector(DeviceDetector):
    """Checks every closed batch of steam/infrared cabinets: peak temperature and hold time.

    A batch that never reaches the limit is `disinfection.temperature_low`; one that reaches it
    but does not hold it long enough is `disinfection.hold_time_short`. A compliant batch is
    evidence that clears both rules for the cabinet.
    """

    device_kinds = CABINETS
    lookback = timedelta(hours=3)

    def __init__(self, rule_id: str) -> None:
        self.rule: RuleSpec = rule(rule_id)

    def horizon(
        self, site: SiteData, device: DeviceData, since: datetime, now: datetime
    ) -> Horizon | None:
        # A batch's verdict changes with data inside it, or when it becomes judgeable (a
        # reading from its end on, or `hold.settle_s` after it): the batches that end after
        # `since − settle`, whole from their batch_start.
        settle = seconds(site.profile.number("hold.settle_s", device.device_id))
        recent = [b.start for b in batches(device) if b.end >= since - settle]
        return Horizon(min(recent, default=since - settle))

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        findings: list[Finding] = []
        for judged in judge_batches(device, site.profile, now):
            verdict = judged.verdict
            if verdict is None:
                findings.append(self._finding(site, device, judged, clear=True))
            elif verdict == self.rule.id:
                findings.append(self._finding(site, device, judged, clear=False))
        return findings

    def _finding(
        self, site: SiteData, device: DeviceData, judged: BatchJudgement, *, clear: bool
    ) -> Finding:
        batch, limit = judged.batch, judged.limit
        if self.rule.id == "disinfection.temperature_low":
            value, bound, unit = judged.peak, limit, "°C"
            summary = f"批次 {batch.batch_id} 最高温度 {judged.peak:.1f} °C，低于 {limit:g} °C"
        else:
            value, bound, unit = judged.hold.total_seconds(), judged.min_hold.total_seconds(), "s"
            summary = (
                f"批次 {batch.batch_id} 在 ≥{limit:g} °C 仅保持 {mmss(judged.hold)}，"
                f"要求 ≥ {mmss(judged.min_hold)}"
            )
        if clear:
            summary = f"批次 {batch.batch_id} 消毒合格"
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=device.device_id,
            state="clear" if clear else "firing",
            severity=Severity.MAJOR,
            started_at=batch.start,
            ended_at=batch.end,
            value=value,
            limit=bound,
            unit=unit,
            summary=summary,
            evidence_from=batch.start,
            evidence_to=batch.end,
            evidence_metric="temp_c",
            episode=batch.batch_id,
            details={
                "batch_id": batch.batch_id,
                "peak_temp_c": round(judged.peak, 2),
                "hold_s": judged.hold.total_seconds(),
                "min_temp_c": limit,
                "min_hold_s": judged.min_hold.total_seconds(),
            },
        )


def compliant_times(device: DeviceData, profile: Profile, now: datetime) -> list[datetime]:
    """Ends of the cabinet's compliant batches (evidence of effective disinfection)."""
    return [j.batch.end for j in judge_batches(device, profile, now) if j.verdict is None]


def compliant_between(
    device: DeviceData, profile: Profile, now: datetime, lo: datetime, hi: datetime
) -> bool:
    """Whether one of `compliant_times` lies in [lo, hi], judging only the batches that end
    there, latest first (batches close in the order they end)."""
    for batch in reversed(batches(device)):
        if batch.end > hi:
            continue
        if batch.end < lo:
            return False
        judged = judge_batch(device, profile, batch, now)
        if judged is not None and judged.verdict is None:
            return True
    return False
