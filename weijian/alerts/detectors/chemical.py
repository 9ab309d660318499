"""Chlorine immersion tanks: available chlorine and immersion time, per basket.

Chlorine is judged only while a basket is immersed: between baskets the tank is dosed and
topped up, so a low reading then disinfects nothing (docs/rules.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from weijian.alerts.detectors.common import DeviceDetector, between, iso, mmss, seconds, series
from weijian.alerts.models import DeviceData, Finding, Profile, Severity, SiteData
from weijian.alerts.rules import rule
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Reading

STALE_AFTER = timedelta(hours=1)


@dataclass(frozen=True)
class Immersion:
    """A basket in the tank: from its basket_in to its basket_out (None while still in)."""

    basket_id: str
    start: datetime
    end: datetime | None

    @property
    def episode(self) -> str:
        # Baskets are reused all day, so the id alone does not name an immersion.
        return f"{self.basket_id}@{iso(self.start)}"


def immersions(device: DeviceData, now: datetime) -> list[Immersion]:
    """Immersions in time order, as of `now`. Read-only: shared by the detectors that ask for
    the same device and time.

    A repeated basket_in of a basket already in is a resend and ignored. A basket "in" for
    longer than `STALE_AFTER` lost its basket_out: it is dropped (no verdict) rather than
    judged against hours of tank data, and a new basket_in of that basket starts afresh.
    """
    return device.memo(("immersions", now), lambda: _immersions(device, now))


def _immersions(device: DeviceData, now: datetime) -> list[Immersion]:
    open_at: dict[str, datetime] = {}
    found: list[Immersion] = []
    for event in sorted(device.events, key=lambda e: (e.ts, e.seq or 0)):
        if event.ts > now:
            break
        basket = str(event.data.get("basket_id", ""))
        if event.type == "basket_in":
            if basket in open_at and event.ts - open_at[basket] > STALE_AFTER:
                del open_at[basket]
            open_at.setdefault(basket, event.ts)
        elif event.type == "basket_out" and basket in open_at:
            found.append(Immersion(basket, open_at.pop(basket), event.ts))
    found.extend(
        Immersion(b, start, None) for b, start in open_at.items() if now - start <= STALE_AFTER
    )
    return sorted(found, key=lambda i: (i.start, i.basket_id))


def readings_during(samples: list[Reading], immersion: Immersion, now: datetime) -> list[Reading]:
    return between(samples, immersion.start, immersion.end or now)


class ChlorineLowDetector(DeviceDetector):
    """`disinfection.chlorine_low`: a reading below the limit while a basket is immersed.

    One episode per immersion; a basket still in with a low reading is an open firing. A later
    basket that came out with every reading at or above the limit clears the rule.
    """

    rule = rule("disinfection.chlorine_low")
    device_kinds = frozenset({DeviceKind.CHLORINE_TANK})
    lookback = timedelta(hours=3)

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        limit = site.profile.number("chlorine.min_mg_l", device.device_id)
        samples = series(device, "chlorine_mg_l")
        findings: list[Finding] = []
        for immersion in immersions(device, now):
            inside = readings_during(samples, immersion, now)
            if not inside:
                continue  # no data: the data-integrity rules speak to that
            lowest = min(r.value for r in inside)
            low = lowest < limit
            if not low and immersion.end is None:
                continue  # compliant so far, but the basket is still in
            summary = (
                f"消毒池浸泡（篮筐 {immersion.basket_id}）期间有效氯最低 {lowest:.0f} mg/L，"
                f"低于 {limit:g} mg/L"
                if low
                else f"篮筐 {immersion.basket_id} 浸泡期间有效氯达标"
            )
            findings.append(
                Finding(
                    rule=self.rule.id,
                    site_id=site.site_id,
                    device_id=device.device_id,
                    state="firing" if low else "clear",
                    severity=Severity.MAJOR,
                    started_at=immersion.start,
                    ended_at=immersion.end,
                    value=lowest,
                    limit=limit,
                    unit="mg/L",
                    summary=summary,
                    evidence_from=immersion.start,
                    evidence_to=immersion.end or inside[-1].ts,
                    evidence_metric="chlorine_mg_l",
                    episode=immersion.episode,
                    details={"basket_id": immersion.basket_id, "samples": len(inside)},
                )
            )
        return findings


class ImmersionShortDetector(DeviceDetector):
    """`disinfection.immersion_short`: basket_in → basket_out (same basket_id) below minimum."""

    rule = rule("disinfection.immersion_short")
    device_kinds = frozenset({DeviceKind.CHLORINE_TANK})
    lookback = timedelta(hours=3)

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        min_s = site.profile.number("chlorine.min_immersion_s", device.device_id)
        findings: list[Finding] = []
        for immersion in immersions(device, now):
            if immersion.end is None:
                continue
            took = immersion.end - immersion.start
            short = took < seconds(min_s)
            findings.append(
                Finding(
                    rule=self.rule.id,
                    site_id=site.site_id,
                    device_id=device.device_id,
                    state="firing" if short else "clear",
                    severity=Severity.MAJOR,
                    started_at=immersion.start,
                    ended_at=immersion.end,
                    value=took.total_seconds(),
                    limit=min_s,
                    unit="s",
                    summary=(
                        f"篮筐 {immersion.basket_id} 浸泡仅 {mmss(took)}，"
                        f"要求 ≥ {mmss(seconds(min_s))}"
                        if short
                        else f"篮筐 {immersion.basket_id} 浸泡时间达标"
                    ),
                    evidence_from=immersion.start,
                    evidence_to=immersion.end,
                    evidence_metric="chlorine_mg_l",
                    episode=immersion.episode,
                    details={"basket_id": immersion.basket_id},
                )
            )
        return findings


def compliant_times(device: DeviceData, profile: Profile, now: datetime) -> list[datetime]:
    """basket_out times of immersions long enough and at strength throughout."""
    return [
        i.end
        for i in immersions(device, now)
        if i.end is not None and _compliant(device, profile, i, now)
    ]


def compliant_between(
    device: DeviceData, profile: Profile, now: datetime, lo: datetime, hi: datetime
) -> bool:
    """Whether one of `compliant_times` lies in [lo, hi], judging only the immersions that
    end there."""
    return any(
        i.end is not None and lo <= i.end <= hi and _compliant(device, profile, i, now)
        for i in immersions(device, now)
    )


def _compliant(device: DeviceData, profile: Profile, immersion: Immersion, now: datetime) -> bool:
    limit = profile.number("chlorine.min_mg_l", device.device_id)
    min_took = seconds(profile.number("chlorine.min_immersion_s", device.device_id))
    if immersion.end is None or immersion.end - immersion.start < min_took:
        return False
    inside = readings_during(series(device, "chlorine_mg_l"), immersion, now)
    return bool(inside) and min(r.value for r in inside) >= limit
