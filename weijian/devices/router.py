"""HTTP: sites, devices, and reading series for the evidence charts."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from weijian.api.auth import CurrentUser
from weijian.api.deps import Conn, FromQuery, Now, ToQuery, time_range
from weijian.devices import service
from weijian.devices.kinds import KINDS
from weijian.devices.models import Device, Site

router = APIRouter(tags=["registry"])

# Bucket widths offered for series, smallest first.
NICE_BUCKETS = tuple(
    timedelta(seconds=s)
    for s in (
        1,
        2,
        5,
        10,
        15,
        30,
        60,
        120,
        300,
        600,
        900,
        1800,
        3600,
        7200,
        10800,
        21600,
        43200,
        86400,
    )
)
TARGET_POINTS = 500
MAX_POINTS = 5000
_BUCKET = re.compile(r"^\s*(\d+)\s*(s|m|min|h|d)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


class SeriesPoint(BaseModel):
    ts: datetime
    avg: float
    min: float
    max: float
    count: int


class Series(BaseModel):
    device_id: str
    metric: str
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    bucket_seconds: int
    points: list[SeriesPoint]


def choose_bucket(span: timedelta, target: int = TARGET_POINTS) -> timedelta:
    """The smallest nice bucket that keeps a span to at most `target` points."""
    for bucket in NICE_BUCKETS:
        if span / bucket <= target:
            return bucket
    days = math.ceil(span / timedelta(days=1) / target)
    return timedelta(days=days)


def parse_bucket(text: str) -> timedelta:
    """'30s', '5m', '1h', '1d' or plain seconds."""
    match = _BUCKET.match(text)
    if match is None or int(match.group(1)) == 0:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"invalid bucket {text!r}: use a positive number of seconds, or e.g. 30s, 5m, 1h, 1d",
        )
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"])


@router.get("/sites", response_model=list[Site])
async def list_sites(
    principal: CurrentUser,
    conn: Conn,
    district: Annotated[str | None, Query(description="Only this district.")] = None,
) -> list[Site]:
    """Supervised sites the user may see."""
    return await service.list_sites_in(conn=conn, site_ids=principal.scope, district=district)


@router.get("/sites/{site_id}", response_model=Site)
async def get_site(site_id: str, principal: CurrentUser, conn: Conn) -> Site:
    site = (
        await service.get_site(conn=conn, site_id=site_id) if principal.sees_site(site_id) else None
    )
    if site is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no site {site_id!r}")
    return site


@router.get("/devices", response_model=list[Device])
async def list_devices(
    principal: CurrentUser,
    conn: Conn,
    site_id: Annotated[str | None, Query(description="Only the devices of this site.")] = None,
) -> list[Device]:
    """Devices (with presence: online, last_seen_at) of the sites the user may see."""
    return await service.list_devices_in(conn=conn, site_ids=principal.scope, site_id=site_id)


@router.get("/readings", response_model=Series)
async def readings(
    *,
    principal: CurrentUser,
    conn: Conn,
    now: Now,
    device_id: str,
    metric: str,
    start: FromQuery = None,
    end: ToQuery = None,
    bucket: Annotated[
        str | None,
        Query(description="Bucket width: seconds or 30s/5m/1h/1d; default keeps ≤ ~500 points."),
    ] = None,
) -> Series:
    """One metric of one device as a time_bucket series (avg/min/max/count); default last 24 h."""
    device = await service.get_device(conn=conn, device_id=device_id)
    if device is None or not principal.sees_site(device.site_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id!r}")
    spec = KINDS[device.kind]
    if metric not in spec.metric_names:
        known = ", ".join(sorted(spec.metric_names)) or "none"
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"a {device.kind.value} has no metric {metric!r} (it reports: {known})",
        )
    window = time_range(start, end, now=now, default_span=timedelta(hours=24))
    width = parse_bucket(bucket) if bucket else choose_bucket(window.span)
    if window.span / width > MAX_POINTS:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"bucket {bucket!r} gives more than {MAX_POINTS} points over this span; widen it",
        )
    rows = await service.reading_series(
        conn=conn,
        device_id=device_id,
        metric=metric,
        start=window.start,
        end=window.end,
        bucket=width,
    )
    return Series(
        device_id=device_id,
        metric=metric,
        start=window.start,
        end=window.end,
        bucket_seconds=int(width.total_seconds()),
        points=[SeriesPoint.model_validate(r) for r in rows],
    )
