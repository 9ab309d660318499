"""Evaluation flow: load a site's data, run the detectors, reconcile alerts, open tasks, queue SMS.

Everything a finding causes is written in one transaction per site, so the outbox never
holds a message for an alert that was rolled back (and vice versa).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from weijian.alerts import repository, service
from weijian.alerts.freshness import Freshness, judged_pairs
from weijian.alerts.models import Detector, DeviceData, Finding, SiteData
from weijian.alerts.profiles import build_profile
from weijian.alerts.windows import Window, WindowCache
from weijian.db.connection import AsyncConn
from weijian.devices import service as devices
from weijian.devices.kinds import DeviceKind, SiteKind
from weijian.inspections import service as inspections
from weijian.notify import service as notify
from weijian.telemetry import Event, Reading
from weijian.users import service as users

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    findings: int = 0
    changes: list[service.AlertChange] = field(default_factory=list)
    tasks_opened: list[int] = field(default_factory=list)
    notifications: list[int] = field(default_factory=list)


# Late data older than this is left to `weijian backtest`.
MAX_LATE = timedelta(days=7)
# Data stamped up to this far after `now` is loaded too: a device whose clock runs ahead sends
# "future" times, which `data.clock_skew` must see when they arrive (it judges receive time;
# the other detectors cut their windows at `now`). Ingest refuses times further off.
AHEAD = timedelta(days=1)


async def load_site_data(
    *,
    conn: AsyncConn,
    site_ids: Sequence[str],
    detectors: Sequence[Detector],
    now: datetime,
    since: Mapping[str, datetime] | None = None,
    cache: WindowCache | None = None,
    focus: Mapping[str, Collection[str]] | None = None,
    freshness: Freshness | None = None,
    new_data: Mapping[str, datetime | None] | None = None,
) -> list[SiteData]:
    """Each site's devices with the readings and events the detectors need, up to `now`.

    `since` (site → earliest device time of newly arrived data) widens the window so that a
    backlog sent after an outage is judged too, not only the last `lookback`. With a `cache`,
    only what arrived since the previous evaluation is read (alerts/windows.py). `focus`
    (site → devices with new data) narrows what the per-device detectors judge; a site not in
    it is judged whole. With `freshness` (and `new_data`: device → earliest device time of
    what arrived since the last evaluation) each site carries `fresh` and its active alerts,
    so the detectors judge only from their horizons (alerts/freshness.py). `new_data` also
    tells the cache which rows to read again (`WindowCache.window`, `announced`).
    """
    rows = await repository.site_devices(conn=conn, site_ids=site_ids)
    if not rows:
        return []
    by_site: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_site[str(row["site_id"])].append(row)
    lookback = kind_lookbacks(detectors)
    sites: list[SiteData] = []
    for site_id, device_rows in by_site.items():
        late = (since or {}).get(site_id)
        late_since = None if late is None else max(late, now - MAX_LATE)
        starts: dict[str, datetime] = {}
        for row in device_rows:
            span = lookback.get(DeviceKind(str(row["kind"])))
            if span is not None:
                start = now - span
                starts[str(row["id"])] = (
                    start if late_since is None else min(start, late_since - span)
                )
        window: Window | None = None
        if cache is None:
            readings, events = await _site_window(conn, starts, now + AHEAD)
        else:
            window = await cache.window(
                conn, starts, now, late_since, ahead=AHEAD, announced=new_data
            )
            readings, events = window.readings, window.events
        conflicts: dict[str, list[Reading]] = defaultdict(list)
        active: frozenset[tuple[str, str | None]] = frozenset()
        if starts:
            copies, active = await repository.conflicts_and_active(
                conn=conn,
                site_id=site_id,
                device_ids=list(starts),
                start=min(starts.values()),
                end=now,
            )
            for r in copies:
                if r.ts >= starts[r.device_id]:
                    conflicts[r.device_id].append(r)
        device_data: dict[str, DeviceData] = {}
        for row in device_rows:
            device_id = str(row["id"])
            device_data[device_id] = DeviceData(
                device_id=device_id,
                kind=DeviceKind(str(row["kind"])),
                readings=readings.get(device_id, []),
                events=events.get(device_id, []),
                last_seen=row["last_seen_at"],
                online=row["online"],
                ordered=True,
                conflicts=conflicts.get(device_id, ()),
                status_at=row["status_at"],
            )
            if window is not None and device_id in window.stamps:
                # Carried by the cache between evaluations (common.stamps, messages).
                device_data[device_id].seed("stamp_parts", window.stamps[device_id])
                device_data[device_id].seed("stored_messages", window.messages[device_id])
        first = device_rows[0]
        profile = build_profile(
            str(first["site_kind"]),
            first["site_profile"],
            # A device's registered reporting interval is its offline baseline.
            {
                str(r["id"]): {"offline.interval_s": r["interval_s"], **r["profile"]}
                for r in device_rows
            },
        )
        chosen = (focus or {}).get(site_id)
        site = SiteData(
            site_id,
            SiteKind(str(first["site_kind"])),
            device_data,
            profile,
            late_since,
            None if chosen is None else frozenset(chosen),
        )
        if freshness is not None:
            site = replace(
                site,
                fresh=freshness.fresh(judged_pairs(site, detectors), new_data or {}),
                active=active,
            )
        sites.append(site)
    return sites


def kind_lookbacks(detectors: Sequence[Detector]) -> dict[DeviceKind, timedelta]:
    """Per device kind, the longest lookback of the detectors that judge it (what to load)."""
    lookback: dict[DeviceKind, timedelta] = {}
    for detector in detectors:
        for kind in detector.device_kinds:
            lookback[kind] = max(lookback.get(kind, timedelta(0)), detector.lookback)
    return lookback


async def _site_window(
    conn: AsyncConn, starts: Mapping[str, datetime], now: datetime
) -> tuple[dict[str, list[Reading]], dict[str, list[Event]]]:
    """Each device's readings and events from its own start to `now`: one query per table for
    the whole site (not two per device), split by device in time order."""
    readings: dict[str, list[Reading]] = defaultdict(list)
    events: dict[str, list[Event]] = defaultdict(list)
    if not starts:
        return readings, events
    ids, earliest = list(starts), min(starts.values())
    for r in await repository.readings_between(conn=conn, device_ids=ids, start=earliest, end=now):
        if r.ts >= starts[r.device_id]:
            readings[r.device_id].append(r)
    for e in await repository.events_between(conn=conn, device_ids=ids, start=earliest, end=now):
        if e.ts >= starts[e.device_id]:
            events[e.device_id].append(e)
    return readings, events


def run_detectors(site: SiteData, detectors: Sequence[Detector], now: datetime) -> list[Finding]:
    """All findings of the detectors that apply to the site's devices in focus (pure)."""
    kinds = site.focus_kinds()
    findings: list[Finding] = []
    for detector in detectors:
        if detector.device_kinds & kinds:
            findings.extend(detector(site, now))
    return findings


async def handle_changes(
    *,
    conn: AsyncConn,
    changes: Sequence[service.AlertChange],
    now: datetime,
    rng: random.Random,
    sign: str,
    result: EvaluationResult,
) -> None:
    """Tasks and SMS for new and escalated alerts."""
    for change in changes:
        if change.kind == "resolved":
            continue
        site = await devices.get_site(conn=conn, site_id=change.site_id)
        if site is None:
            continue
        if change.kind == "fired":
            result.notifications += await notify.notify_alert(
                conn=conn,
                alert_id=change.alert_id,
                rule=change.rule,
                severity=change.severity,
                summary=change.summary,
                site=site,
                sign=sign,
                now=now,
            )
        outcome = await inspections.open_or_join(
            conn=conn,
            site_id=change.site_id,
            alert_id=change.alert_id,
            severity=change.severity,
            summary=change.summary,
            now=now,
            rng=rng,
        )
        if outcome is None:
            continue
        if outcome.opened:
            result.tasks_opened.append(outcome.task_id)
        await conn.execute(
            "SELECT pg_notify(%s, %s)",
            (
                TASKS_CHANNEL,
                orjson.dumps(
                    {
                        "kind": "opened" if outcome.opened else "alert_joined",
                        "task_id": outcome.task_id,
                        "site_id": change.site_id,
                    }
                ).decode(),
            ),
        )
        people = [
            u
            for name in outcome.inspectors
            if (u := await users.get_user(conn=conn, username=name))
        ]
        result.notifications += await notify.notify_inspectors(
            conn=conn,
            task_id=outcome.task_id,
            alert_id=change.alert_id,
            opened=outcome.opened,
            inspectors=people,
            site=site,
            summary=change.summary,
            due_at=outcome.due_at,
            sign=sign,
            now=now,
        )


ALERTS_CHANNEL = "weijian_alerts"
TASKS_CHANNEL = "weijian_tasks"


async def announce(*, conn: AsyncConn, changes: Sequence[service.AlertChange]) -> None:
    """Tell live listeners (the wall) about alert changes when the transaction commits."""
    for change in changes:
        payload = orjson.dumps(
            {
                "kind": change.kind,
                "alert_id": change.alert_id,
                "site_id": change.site_id,
                "device_id": change.device_id,
                "rule": change.rule,
                "severity": change.severity.value,
            }
        ).decode()
        await conn.execute("SELECT pg_notify(%s, %s)", (ALERTS_CHANNEL, payload))


async def evaluate_sites(
    *,
    conn: AsyncConn,
    site_ids: Sequence[str],
    detectors: Sequence[Detector],
    now: datetime,
    rng: random.Random,
    sign: str,
    since: Mapping[str, datetime] | None = None,
    cache: WindowCache | None = None,
    focus: Mapping[str, Collection[str]] | None = None,
    freshness: Freshness | None = None,
    new_data: Mapping[str, datetime | None] | None = None,
    narrow: bool = True,
) -> EvaluationResult:
    """Run the detectors over the sites and commit what follows, one transaction per site.

    With `freshness`, each (rule, device) judged is remembered as judged at `now`; `narrow`
    lets the detectors judge only from their horizons (False: the whole lookback, a full
    scan)."""
    result = EvaluationResult()
    for site in await load_site_data(
        conn=conn,
        site_ids=site_ids,
        detectors=detectors,
        now=now,
        since=since,
        cache=cache,
        focus=focus,
        freshness=freshness if narrow else None,
        new_data=new_data,
    ):
        findings = run_detectors(site, detectors, now)
        result.findings += len(findings)
        async with conn.transaction():
            changes = await service.apply_findings(conn=conn, findings=findings, now=now)
            await handle_changes(
                conn=conn, changes=changes, now=now, rng=rng, sign=sign, result=result
            )
            await announce(conn=conn, changes=changes)
        result.changes.extend(changes)
        if freshness is not None:
            freshness.mark(judged_pairs(site, detectors), now)
    return result
