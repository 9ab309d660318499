"""Release without effective disinfection: the packing counter rises while no disinfection stage
of the site has met its limit recently (site-level; the finding sits on the line meter)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Literal, NamedTuple

from weijian.alerts.detectors import chemical, dish, thermal
from weijian.alerts.detectors.common import (
    floor_to,
    iso,
    local_time,
    seconds,
    series,
    settle,
    site_within,
    upto,
)
from weijian.alerts.models import DeviceData, Finding, Profile, SiteData
from weijian.alerts.models import Severity as Sev
from weijian.alerts.rules import rule
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Reading

# A drop to below this fraction of the highest value seen is a counter reset (reboot); a
# smaller drop is a glitch (e.g. samples reordered by a clock jump) and adds nothing.
_RESET_FRACTION = 0.5


class Increment(NamedTuple):
    """Pieces packed between the previous counter sample and this one (a tuple: built for
    every counter sample of hours of packing)."""

    ts: datetime
    pieces: float
    covered: bool = False


def increments(samples: list[Reading]) -> list[Increment]:
    """Rises of a `packed_total` counter, robust to resets: after a reset the new value itself
    is what was packed since (the counter restarted from zero)."""
    found: list[Increment] = []
    top: float | None = None
    for sample in samples:
        if top is None:
            top = sample.value
            continue
        if sample.value < top * _RESET_FRACTION:
            rise, top = sample.value, sample.value
        else:
            rise, top = max(0.0, sample.value - top), max(top, sample.value)
        if rise > 0:
            found.append(Increment(sample.ts, rise))
    return found


class Evidence:
    """When the site's disinfection stages met their limits, found lazily: whether some stage
    did within an interval, judging only what it must (cabinet batches and baskets that ended
    there, dish machine states from the interval's end back), cheapest stages first. Usually
    the first batch or state looked at answers, instead of judging hours of every stage."""

    def __init__(self, site: SiteData, now: datetime) -> None:
        order = {k: i for i, k in enumerate(_STAGES)}
        self._stages = sorted(
            (d for d in site.devices.values() if d.kind in order), key=lambda d: order[d.kind]
        )
        self._profile = site.profile
        self._now = now

    def covered(self, lo: datetime, hi: datetime) -> bool:
        for device in self._stages:
            check = _BETWEEN[device.kind]
            if check(device, self._profile, self._now, lo, hi):
                return True
        return False


_STAGES = (
    DeviceKind.STEAM_CABINET,
    DeviceKind.INFRARED_CABINET,
    DeviceKind.CHLORINE_TANK,
    DeviceKind.DISH_MACHINE,
)
_BETWEEN: dict[DeviceKind, Callable[[DeviceData, Profile, datetime, datetime, datetime], bool]] = {
    DeviceKind.STEAM_CABINET: thermal.compliant_between,
    DeviceKind.INFRARED_CABINET: thermal.compliant_between,
    DeviceKind.CHLORINE_TANK: chemical.compliant_between,
    DeviceKind.DISH_MACHINE: dish.compliant_between,
}


class ReleaseDetector:
    """`disinfection.released_undisinfected` (critical).

    An increment of the counter at time t is covered when some stage met its limit in
    [t − lag, t + skew]: the devices' clocks may differ by up to the allowed clock skew, so
    evidence stamped a little after the packing still counts. Uncovered pieces are summed per
    fixed period (episode = period start, stable across runs). Only increments with their whole
    evidence window inside the lookback (t ≥ window start + lag, t ≤ now − skew) are judged.
    The rule clears once the latest judged increment is covered.
    """

    rule = rule("disinfection.released_undisinfected")
    device_kinds = frozenset(
        {DeviceKind.LINE_METER, DeviceKind.DISH_MACHINE, DeviceKind.CHLORINE_TANK}
        | thermal.CABINETS
    )
    lookback = timedelta(hours=4)
    scope: Literal["device", "site"] = "site"

    def __call__(self, site: SiteData, now: datetime) -> list[Finding]:
        if not site.of_kind(DeviceKind.LINE_METER):
            return []
        whole = site
        site = site_within(site, self.device_kinds, now - self.lookback, now)
        evidence = Evidence(site, now)
        findings: list[Finding] = []
        for meter in site.of_kind(DeviceKind.LINE_METER):
            since = self._since(whole, meter)
            found = self._meter(site, meter, evidence, now, since)
            # Judged from a horizon, no alert of the meter is active: only violations matter.
            findings += (
                settle(found) if since is None else [f for f in found if f.state == "firing"]
            )
        return findings

    def _since(self, site: SiteData, meter: DeviceData) -> datetime | None:
        """From where the meter's verdict may have changed: the earliest `since` of every
        device the rule reads (new packing, or new evidence), or None to judge it all."""
        times = [site.since(self.rule.id, meter.device_id)]
        times += [site.since(self.rule.id, d.device_id) for d in site.of_kind(*self.device_kinds)]
        if any(t is None for t in times):
            return None
        return min(t for t in times if t is not None)

    def _meter(
        self,
        site: SiteData,
        meter: DeviceData,
        evidence: Evidence,
        now: datetime,
        since: datetime | None,
    ) -> list[Finding]:
        lag = timedelta(minutes=site.profile.number("release.max_lag_min", meter.device_id))
        period = timedelta(minutes=site.profile.number("release.period_min", meter.device_id))
        skew = seconds(site.profile.number("clock_skew.max_s", meter.device_id))
        samples = upto(series(meter, "packed_total"), now)
        first = now - self.lookback + lag
        if since is not None:
            # An increment is judged once `skew` has passed (and a batch once it settled):
            # the periods holding increments that may have been judged or covered since, whole.
            settled = max(
                (
                    seconds(site.profile.number("hold.settle_s", d.device_id))
                    for d in site.of_kind(*thermal.CABINETS)
                ),
                default=timedelta(0),
            )
            first = max(first, floor_to(since - skew - settled, period))
        judged = [
            Increment(inc.ts, inc.pieces, evidence.covered(inc.ts - lag, inc.ts + skew))
            for inc in increments(samples)
            if first <= inc.ts <= now - skew
        ]
        findings: list[Finding] = []
        buckets: dict[datetime, list[Increment]] = {}
        for inc in judged:
            if not inc.covered:
                buckets.setdefault(floor_to(inc.ts, period), []).append(inc)
        for start, uncovered in buckets.items():
            # Over once a later increment is covered; it ends at its last uncovered increment.
            later = any(i.covered and i.ts > uncovered[-1].ts for i in judged)
            ended = uncovered[-1].ts if later else None
            findings.append(
                self._firing(
                    site, meter, uncovered, start=start, period=period, ended=ended, lag=lag
                )
            )
        if judged and judged[-1].covered:
            findings.append(self._clear(site, meter, judged, buckets, period))
        return findings

    def _clear(
        self,
        site: SiteData,
        meter: DeviceData,
        judged: list[Increment],
        buckets: dict[datetime, list[Increment]],
        period: timedelta,
    ) -> Finding:
        last_bad = max(buckets) if buckets else None
        after = buckets[last_bad][-1].ts if last_bad is not None else None
        since = [i for i in judged if after is None or i.ts > after]
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=meter.device_id,
            state="clear",
            severity=Sev.CRITICAL,
            limit=0.0,
            unit="件",
            summary="包装前已有达标消毒记录",
            evidence_from=since[0].ts,
            evidence_to=judged[-1].ts,
            evidence_metric="packed_total",
            episode=iso(last_bad if last_bad is not None else floor_to(judged[-1].ts, period)),
        )

    def _firing(
        self,
        site: SiteData,
        meter: DeviceData,
        uncovered: list[Increment],
        *,
        start: datetime,
        period: timedelta,
        ended: datetime | None,
        lag: timedelta,
    ) -> Finding:
        pieces = sum(i.pieces for i in uncovered)
        span = f"{local_time(start)}–{local_time(start + period)[-5:]}"
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=meter.device_id,
            state="firing",
            severity=Sev.CRITICAL,
            started_at=uncovered[0].ts,
            ended_at=ended,
            value=pieces,
            limit=0.0,
            unit="件",
            summary=(
                f"{span} 包装 {pieces:.0f} 件，包装前 {lag.total_seconds() / 60:.0f} 分钟内"
                "本单位无任何达标消毒记录（疑似未经有效消毒即包装出厂）"
            ),
            evidence_from=uncovered[0].ts - lag,
            evidence_to=uncovered[-1].ts,
            evidence_metric="packed_total",
            episode=iso(start),
            details={"increments": len(uncovered), "max_lag_s": lag.total_seconds()},
        )
