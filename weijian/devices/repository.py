"""All SQL of the registry (sites, devices, presence)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from weijian.db.connection import AsyncConn
from weijian.devices.models import Device, Site

_SITE_COLUMNS = "id, name, kind, district, address, lat, lon, phones, profile, created_at"
_DEVICE_COLUMNS = (
    "id, site_id, kind, name, interval_s, profile, created_at, online, status_at, last_seen_at"
)


async def insert_site(
    *,
    conn: AsyncConn,
    site_id: str,
    name: str,
    kind: str,
    district: str,
    address: str | None,
    lat: float | None,
    lon: float | None,
    phones: Sequence[str],
) -> Site:
    cur = await conn.execute(
        f"INSERT INTO sites (id, name, kind, district, address, lat, lon, phones)"
        f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_SITE_COLUMNS}",
        (site_id, name, kind, district, address, lat, lon, list(phones)),
    )
    row = await cur.fetchone()
    assert row is not None
    return Site.model_validate(row)


async def get_site(*, conn: AsyncConn, site_id: str) -> Site | None:
    cur = await conn.execute(f"SELECT {_SITE_COLUMNS} FROM sites WHERE id = %s", (site_id,))
    row = await cur.fetchone()
    return None if row is None else Site.model_validate(row)


async def list_sites(
    *, conn: AsyncConn, district: str | None = None, site_ids: Sequence[str] | None = None
) -> list[Site]:
    cur = await conn.execute(
        f"SELECT {_SITE_COLUMNS} FROM sites"
        " WHERE (%(district)s::text IS NULL OR district = %(district)s)"
        "   AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s))"
        " ORDER BY id",
        {"district": district, "ids": None if site_ids is None else list(site_ids)},
    )
    return [Site.model_validate(r) for r in await cur.fetchall()]


async def site_exists(*, conn: AsyncConn, site_id: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM sites WHERE id = %s", (site_id,))
    return await cur.fetchone() is not None


async def set_site_profile(*, conn: AsyncConn, site_id: str, profile: dict[str, Any]) -> None:
    await conn.execute("UPDATE sites SET profile = %s WHERE id = %s", (Jsonb(profile), site_id))


async def insert_device(
    *, conn: AsyncConn, device_id: str, site_id: str, kind: str, name: str | None, interval_s: int
) -> Device:
    cur = await conn.execute(
        f"INSERT INTO devices (id, site_id, kind, name, interval_s, credentials_issued_at)"
        f" VALUES (%s, %s, %s, %s, %s, now()) RETURNING {_DEVICE_COLUMNS}",
        (device_id, site_id, kind, name, interval_s),
    )
    row = await cur.fetchone()
    assert row is not None
    return Device.model_validate(row)


async def get_device(*, conn: AsyncConn, device_id: str) -> Device | None:
    cur = await conn.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id = %s", (device_id,))
    row = await cur.fetchone()
    return None if row is None else Device.model_validate(row)


async def list_devices(
    *, conn: AsyncConn, site_id: str | None = None, site_ids: Sequence[str] | None = None
) -> list[Device]:
    cur = await conn.execute(
        f"SELECT {_DEVICE_COLUMNS} FROM devices"
        " WHERE (%(site)s::text IS NULL OR site_id = %(site)s)"
        "   AND (%(ids)s::text[] IS NULL OR site_id = ANY(%(ids)s))"
        " ORDER BY site_id, id",
        {"site": site_id, "ids": None if site_ids is None else list(site_ids)},
    )
    return [Device.model_validate(r) for r in await cur.fetchall()]


async def mark_credentials_issued(*, conn: AsyncConn, device_id: str, at: datetime) -> None:
    await conn.execute(
        "UPDATE devices SET credentials_issued_at = %s WHERE id = %s", (at, device_id)
    )


async def set_device_profile(*, conn: AsyncConn, device_id: str, profile: dict[str, Any]) -> None:
    await conn.execute("UPDATE devices SET profile = %s WHERE id = %s", (Jsonb(profile), device_id))


# -- read models for the API (wall, evidence charts) ---------------------------------------


async def reading_series(
    *,
    conn: AsyncConn,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    bucket: timedelta,
) -> list[dict[str, Any]]:
    """One metric of one device in [start, end), aggregated per `time_bucket`."""
    cur = await conn.execute(
        "SELECT time_bucket(%(bucket)s, ts) AS ts, avg(value) AS avg, min(value) AS min,"
        " max(value) AS max, count(*) AS count FROM readings"
        " WHERE device_id = %(device)s AND metric = %(metric)s AND ts >= %(start)s AND ts < %(end)s"
        " GROUP BY 1 ORDER BY 1",
        {"bucket": bucket, "device": device_id, "metric": metric, "start": start, "end": end},
    )
    return list(await cur.fetchall())


async def presence_counts(
    *, conn: AsyncConn, site_ids: Sequence[str] | None = None
) -> dict[str, int]:
    """Registered devices and those currently online (a device never heard from is not online)."""
    cur = await conn.execute(
        "SELECT count(*) AS registered, count(*) FILTER (WHERE online) AS online FROM devices"
        " WHERE (%(ids)s::text[] IS NULL OR site_id = ANY(%(ids)s))",
        {"ids": None if site_ids is None else list(site_ids)},
    )
    row = await cur.fetchone()
    assert row is not None
    return {"registered": int(row["registered"]), "online": int(row["online"])}
