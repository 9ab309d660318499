"""`weijian backtest`: which alerts the detectors would have raised over stored history.

The same pure detectors as the live system are replayed over the stored readings and events,
stepping a simulated `now` through the period; nothing is written. With `--override` a bureau
sees what a changed limit would do before adopting it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from weijian.alerts import repository
from weijian.alerts.flows import load_site_data, run_detectors
from weijian.alerts.models import Detector, Finding, Profile, SiteData
from weijian.db.connection import AsyncConn


@dataclass
class WouldFire:
    """One alert raise the detectors would have made."""

    rule: str
    site_id: str
    device_id: str | None
    severity: str
    first_seen: datetime
    summary: str
    episode: str | None
    value: float | None
    limit: float | None

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "first_seen": self.first_seen.isoformat()}


@dataclass
class BacktestResult:
    start: datetime
    end: datetime
    step_s: float
    overrides: dict[str, Any]
    raised: list[WouldFire] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.raised:
            out[item.rule] = out.get(item.rule, 0) + 1
        return dict(sorted(out.items()))


def _with_overrides(site: SiteData, overrides: Mapping[str, Any]) -> SiteData:
    if not overrides:
        return site
    values = {**site.profile.as_dict(), **overrides}
    return replace(site, profile=Profile(values, site.profile.device_overrides()))


async def backtest(
    *,
    conn: AsyncConn,
    start: datetime,
    end: datetime,
    step: timedelta,
    detectors: Sequence[Detector],
    site_ids: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> BacktestResult:
    """Replay the detectors every `step` over [start, end]; collect what would have fired."""
    if end <= start:
        raise ValueError("--to must be after --from")
    if step <= timedelta(0):
        raise ValueError("the step must be positive")
    sites = list(site_ids) if site_ids else await repository.all_site_ids(conn=conn)
    result = BacktestResult(start, end, step.total_seconds(), dict(overrides or {}))
    open_conditions: set[tuple[str, str, str | None]] = set()
    seen_episodes: set[tuple[str, str, str | None, str]] = set()
    now = start + step
    while now <= end:
        for site in await load_site_data(conn=conn, site_ids=sites, detectors=detectors, now=now):
            findings = run_detectors(_with_overrides(site, overrides or {}), detectors, now)
            _collect(result, findings, now, open_conditions, seen_episodes)
        now += step
    return result


def _collect(
    result: BacktestResult,
    findings: Sequence[Finding],
    now: datetime,
    open_conditions: set[tuple[str, str, str | None]],
    seen_episodes: set[tuple[str, str, str | None, str]],
) -> None:
    firing_now: set[tuple[str, str, str | None]] = set()
    for f in findings:
        key = (f.rule, f.site_id, f.device_id)
        if f.state != "firing":
            continue
        if f.episode is not None:
            if (*key, f.episode) in seen_episodes:
                continue
            seen_episodes.add((*key, f.episode))
        else:
            firing_now.add(key)
            if key in open_conditions:
                continue  # the same ongoing condition: one alert
        result.raised.append(
            WouldFire(
                f.rule,
                f.site_id,
                f.device_id,
                f.severity.value,
                f.ended_at or f.started_at or now,
                f.summary,
                f.episode,
                f.value,
                f.limit,
            )
        )
    # Conditions not firing any more may raise again later (a new alert, as live).
    open_conditions.intersection_update(firing_now)
    open_conditions.update(firing_now)
