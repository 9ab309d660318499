"""All SQL of the alerts domain: alerts, their history and episodes, silences, detector input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from weijian.alerts.models import Alert
from weijian.db.connection import AsyncConn
from weijian.telemetry import Event, Reading

_ALERT_COLUMNS = (
    "id, fingerprint, rule, severity, status, site_id, device_id, started_at, last_seen_at,"
    " detected_at, resolved_at, acknowledged_at, acknowledged_by, value, limit_value, unit, source,"
    " summary, evidence_from, evidence_to, evidence_metric, occurrences, clear_streak, details"
)


@dataclass
class LifecycleRows:
    """What the alert lifecycle reads before reconciling one evaluation's findings."""

    latest: dict[str, dict[str, Any]]  # fingerprint → its latest alert, locked
    seen: set[tuple[str, str]]  # (fingerprint, episode) raised before
    silences: list[dict[str, Any]]  # in force at some time of the findings
    offline_devices: set[str]  # with an active device.offline alert
    silent_sites: set[str]  # with an active site-level device.offline alert


async def lifecycle_rows(
    *,
    conn: AsyncConn,
    fingerprints: Sequence[str],
    episodes: Sequence[str],
    site_ids: Sequence[str],
    start: datetime,
    end: datetime,
) -> LifecycleRows:
    """The lifecycle's reads in one round trip (pipeline mode): each fingerprint's latest
    alert (the active one if any: at most one is, and it is the latest), locked, with who
    resolved it; the episodes raised before; the silences in force in [start, end]; which
    devices and sites are offline."""
    async with conn.pipeline():
        latest = await conn.execute(
            f"SELECT {_ALERT_COLUMNS}, resolved_by FROM alerts WHERE id IN ("
            " SELECT DISTINCT ON (fingerprint) id FROM alerts WHERE fingerprint = ANY(%s)"
            " ORDER BY fingerprint, id DESC) ORDER BY id FOR UPDATE",
            (list(fingerprints),),
        )
        seen = await conn.cursor(row_factory=tuple_row).execute(
            "SELECT fingerprint, episode FROM alert_episodes"
            " WHERE fingerprint = ANY(%s) AND episode = ANY(%s)",
            (list(fingerprints), list(episodes)),
        )
        silences = await conn.execute(
            "SELECT id, site_id, device_id, rule, starts_at, ends_at, reason, created_by"
            " FROM silences WHERE starts_at <= %s AND ends_at > %s",
            (end, start),
        )
        offline = await conn.cursor(row_factory=tuple_row).execute(
            "SELECT site_id, device_id FROM alerts WHERE rule = 'device.offline'"
            " AND status <> 'resolved' AND site_id = ANY(%s)",
            (list(site_ids),),
        )
    rows = await offline.fetchall()
    return LifecycleRows(
        latest={str(row["fingerprint"]): row for row in await latest.fetchall()},
        seen={(str(f), str(e)) for f, e in await seen.fetchall()},
        silences=list(await silences.fetchall()),
        offline_devices={str(d) for _, d in rows if d is not None},
        silent_sites={str(s) for s, d in rows if d is None},
    )


async def alert_row(*, conn: AsyncConn, alert_id: int) -> dict[str, Any] | None:
    """One alert as the lifecycle reads it (with who resolved it)."""
    cur = await conn.execute(
        f"SELECT {_ALERT_COLUMNS}, resolved_by FROM alerts WHERE id = %s", (alert_id,)
    )
    return await cur.fetchone()


async def get_alert(*, conn: AsyncConn, alert_id: int) -> Alert | None:
    cur = await conn.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = %s", (alert_id,))
    row = await cur.fetchone()
    return None if row is None else Alert.model_validate(row)


async def lock_alert(*, conn: AsyncConn, alert_id: int) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = %s FOR UPDATE", (alert_id,)
    )
    return await cur.fetchone()


async def list_alerts(
    *,
    conn: AsyncConn,
    status: str | None = None,
    site_id: str | None = None,
    rule: str | None = None,
    site_ids: Sequence[str] | None = None,
    since: datetime | None = None,
    limit: int = 200,
) -> list[Alert]:
    cur = await conn.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts"
        " WHERE (%(status)s::text IS NULL OR status = %(status)s)"
        "   AND (%(site)s::text IS NULL OR site_id = %(site)s)"
        "   AND (%(rule)s::text IS NULL OR rule = %(rule)s)"
        "   AND (%(ids)s::text[] IS NULL OR site_id = ANY(%(ids)s))"
        "   AND (%(since)s::timestamptz IS NULL OR detected_at >= %(since)s)"
        " ORDER BY detected_at DESC, id DESC LIMIT %(limit)s",
        {
            "status": status,
            "site": site_id,
            "rule": rule,
            "limit": limit,
            "since": since,
            "ids": None if site_ids is None else list(site_ids),
        },
    )
    return [Alert.model_validate(r) for r in await cur.fetchall()]


async def record_episode(
    *, conn: AsyncConn, fingerprint: str, episode: str, alert_id: int, at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO alert_episodes (fingerprint, episode, alert_id, seen_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (fingerprint, episode, alert_id, at),
    )


async def detections(*, conn: AsyncConn) -> list[dict[str, Any]]:
    """Every alert the platform raised, once (episodes folded into it are occurrences, a
    reopened alert is still the one alert), with the time the platform first detected it, the
    highest severity it reached (severity only rises) and how often it was reopened — what an
    evaluation scores against ground truth."""
    cur = await conn.execute(
        "SELECT a.id, a.rule, a.site_id, a.device_id, a.detected_at AS first_detected_at,"
        " a.severity, a.occurrences,"
        " (SELECT count(*) FROM alert_history h WHERE h.alert_id = a.id"
        "   AND h.action = 'reopened') AS reopened"
        " FROM alerts a ORDER BY a.detected_at, a.id"
    )
    return list(await cur.fetchall())


async def insert_alert(*, conn: AsyncConn, values: dict[str, Any]) -> int:
    values = {**values, "details": Jsonb(values.get("details") or {})}
    columns = ", ".join(values)
    placeholders = ", ".join(f"%({k})s" for k in values)
    cur = await conn.execute(
        f"INSERT INTO alerts ({columns}) VALUES ({placeholders}) RETURNING id", values
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


async def update_alert(*, conn: AsyncConn, alert_id: int, values: dict[str, Any]) -> None:
    if "details" in values:
        values = {**values, "details": Jsonb(values["details"])}
    assignments = ", ".join(f"{k} = %({k})s" for k in values)
    await conn.execute(
        f"UPDATE alerts SET {assignments} WHERE id = %(_id)s", {**values, "_id": alert_id}
    )


async def add_history(
    *,
    conn: AsyncConn,
    alert_id: int,
    action: str,
    actor: str,
    from_status: str | None,
    to_status: str | None,
    severity: str | None,
    at: datetime,
    note: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO alert_history (alert_id, at, action, from_status, to_status, severity, actor,"
        " note, details) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (alert_id, at, action, from_status, to_status, severity, actor, note, Jsonb(details or {})),
    )


async def history(*, conn: AsyncConn, alert_id: int) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT at, action, from_status, to_status, severity, actor, note, details"
        " FROM alert_history WHERE alert_id = %s ORDER BY id",
        (alert_id,),
    )
    return list(await cur.fetchall())


async def insert_silence(
    *,
    conn: AsyncConn,
    site_id: str | None,
    device_id: str | None,
    rule: str | None,
    starts_at: datetime,
    ends_at: datetime,
    reason: str,
    created_by: str,
) -> int:
    cur = await conn.execute(
        "INSERT INTO silences (site_id, device_id, rule, starts_at, ends_at, reason, created_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (site_id, device_id, rule, starts_at, ends_at, reason, created_by),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


# -- detector input ------------------------------------------------------------------------


async def site_devices(*, conn: AsyncConn, site_ids: Sequence[str]) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT d.id, d.site_id, d.kind, d.interval_s, d.profile, d.online, d.last_seen_at,"
        " d.status_at,"
        " s.kind AS site_kind, s.profile AS site_profile"
        " FROM devices d JOIN sites s ON s.id = d.site_id WHERE d.site_id = ANY(%s)"
        " ORDER BY d.site_id, d.id",
        (list(site_ids),),
    )
    return list(await cur.fetchall())


async def sites_of_devices(*, conn: AsyncConn, device_ids: Sequence[str]) -> list[str]:
    cur = await conn.execute(
        "SELECT DISTINCT site_id FROM devices WHERE id = ANY(%s)", (list(device_ids),)
    )
    return [str(r["site_id"]) for r in await cur.fetchall()]


async def site_of_device(*, conn: AsyncConn, device_ids: Sequence[str]) -> dict[str, str]:
    cur = await conn.execute(
        "SELECT id, site_id FROM devices WHERE id = ANY(%s)", (list(device_ids),)
    )
    return {str(r["id"]): str(r["site_id"]) for r in await cur.fetchall()}


async def all_site_ids(*, conn: AsyncConn) -> list[str]:
    cur = await conn.execute("SELECT id FROM sites ORDER BY id")
    return [str(r["id"]) for r in await cur.fetchall()]


async def readings_between(
    *, conn: AsyncConn, device_ids: Sequence[str], start: datetime, end: datetime
) -> list[Reading]:
    # Tuples, not dicts: this is the detectors' hot path (hours of data per evaluation).
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT ts, device_id, metric, value, seq, received_at FROM readings"
            " WHERE device_id = ANY(%s) AND ts >= %s AND ts <= %s ORDER BY ts",
            (list(device_ids), start, end),
        )
        return [Reading(*row) for row in await cur.fetchall()]


async def window_rows(
    *, conn: AsyncConn, device_ids: Sequence[str], start: datetime, end: datetime
) -> tuple[list[Reading], list[Event]]:
    """`readings_between` and `events_between` in one round trip (pipeline mode)."""
    async with conn.pipeline():
        readings = await conn.cursor(row_factory=tuple_row).execute(
            "SELECT ts, device_id, metric, value, seq, received_at FROM readings"
            " WHERE device_id = ANY(%s) AND ts >= %s AND ts <= %s ORDER BY ts",
            (list(device_ids), start, end),
        )
        events = await conn.cursor(row_factory=tuple_row).execute(
            "SELECT ts, device_id, type, data, seq, received_at FROM events"
            " WHERE device_id = ANY(%s) AND ts >= %s AND ts <= %s ORDER BY ts",
            (list(device_ids), start, end),
        )
    return [Reading(*r) for r in await readings.fetchall()], [
        Event(*e) for e in await events.fetchall()
    ]


async def events_between(
    *, conn: AsyncConn, device_ids: Sequence[str], start: datetime, end: datetime
) -> list[Event]:
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT ts, device_id, type, data, seq, received_at FROM events"
            " WHERE device_id = ANY(%s) AND ts >= %s AND ts <= %s ORDER BY ts",
            (list(device_ids), start, end),
        )
        return [Event(*row) for row in await cur.fetchall()]


# -- read models for the API (wall) ----------------------------------------------------------


async def active_by_site(
    *, conn: AsyncConn, site_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Per site with active alerts: how many are firing / acknowledged, and the worst severity."""
    cur = await conn.execute(
        "SELECT site_id,"
        " count(*) FILTER (WHERE status = 'firing') AS firing,"
        " count(*) FILTER (WHERE status = 'acknowledged') AS acknowledged,"
        " (array_agg(severity ORDER BY CASE severity WHEN 'critical' THEN 3 WHEN 'major' THEN 2"
        "   WHEN 'warning' THEN 1 ELSE 0 END DESC))[1] AS worst_severity"
        " FROM alerts WHERE status <> 'resolved'"
        "   AND (%(ids)s::text[] IS NULL OR site_id = ANY(%(ids)s))"
        " GROUP BY site_id ORDER BY site_id",
        {"ids": None if site_ids is None else list(site_ids)},
    )
    return list(await cur.fetchall())


async def count_detected_since(
    *, conn: AsyncConn, since: datetime, site_ids: Sequence[str] | None = None
) -> dict[str, int]:
    """Alerts detected since `since`, by severity."""
    cur = await conn.execute(
        "SELECT severity, count(*) AS n FROM alerts WHERE detected_at >= %(since)s"
        "   AND (%(ids)s::text[] IS NULL OR site_id = ANY(%(ids)s)) GROUP BY severity",
        {"since": since, "ids": None if site_ids is None else list(site_ids)},
    )
    return {str(r["severity"]): int(r["n"]) for r in await cur.fetchall()}


async def record_profile_change(
    *,
    conn: AsyncConn,
    actor: str,
    site_id: str | None,
    device_id: str | None,
    key: str,
    old: Any,
    new: Any,
) -> None:
    await conn.execute(
        "INSERT INTO profile_changes (actor, site_id, device_id, key, old_value, new_value)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (actor, site_id, device_id, key, Jsonb(old), Jsonb(new)),
    )


async def profile_changes(*, conn: AsyncConn, site_id: str) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT at, actor, site_id, device_id, key, old_value, new_value FROM profile_changes"
        " WHERE site_id = %s OR device_id IN (SELECT id FROM devices WHERE site_id = %s)"
        " ORDER BY id",
        (site_id, site_id),
    )
    return list(await cur.fetchall())


async def conflicts_and_active(
    *,
    conn: AsyncConn,
    site_id: str,
    device_ids: Sequence[str],
    start: datetime,
    end: datetime,
) -> tuple[list[Reading], frozenset[tuple[str, str | None]]]:
    """In one round trip (pipeline mode): resent readings that ingest kept out because their
    values differ from the stored ones (dead letters `conflicting_duplicate`), with device
    time in [start, end] (received after the reading they contradict, so no earlier than
    `start`); and (rule, device) of the site's active alerts."""
    async with conn.pipeline():
        copies = await conn.cursor(row_factory=tuple_row).execute(
            _CONFLICTS_SQL, (list(device_ids), start)
        )
        active = await conn.cursor(row_factory=tuple_row).execute(_ACTIVE_SQL, (site_id,))
    found = _copies(await copies.fetchall(), start, end)
    return found, frozenset(
        (str(r), None if d is None else str(d)) for r, d in await active.fetchall()
    )


_CONFLICTS_SQL = (
    "SELECT device_id, payload, received_at FROM dead_letters"
    " WHERE reason = 'conflicting_duplicate' AND device_id = ANY(%s)"
    " AND received_at >= %s ORDER BY received_at"
)
_ACTIVE_SQL = "SELECT rule, device_id FROM alerts WHERE site_id = %s AND status <> 'resolved'"


def _copies(rows: Sequence[tuple[Any, ...]], start: datetime, end: datetime) -> list[Reading]:
    out: list[Reading] = []
    for device_id, payload, received_at in rows:
        body = orjson.loads(payload)
        ts = datetime.fromtimestamp(body["ts"] / 1000, UTC)
        if start <= ts <= end:
            out.extend(
                Reading(ts, str(device_id), str(m), float(v), body.get("seq"), received_at)
                for m, v in body["metrics"].items()
            )
    return out
