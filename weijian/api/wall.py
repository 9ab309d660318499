"""The monitoring wall (/wall), the inspector's phone page (/m), and the wall's overview numbers."""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse
from pydantic import BaseModel

from weijian.alerts import service as alerts
from weijian.api.auth import CurrentUser
from weijian.api.deps import Conn, Now
from weijian.devices import service as devices
from weijian.inspections import service as inspections
from weijian.inspections.models import TaskStatus
from weijian.users.models import Role

STATIC = Path(__file__).parent / "static"
# The bureau's day (今日) starts at midnight local time.
BUREAU_TZ = ZoneInfo("Asia/Shanghai")
# Pages load only what the app serves: no CDN, no inline script.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
SiteState = Literal["ok", "warning", "alarm"]
_STATE_OF: dict[str, SiteState] = {
    "critical": "alarm",
    "major": "alarm",
    "warning": "warning",
    "info": "ok",
}

pages = APIRouter(include_in_schema=False)
router = APIRouter(tags=["wall"])


class SiteStatus(BaseModel):
    site_id: str
    state: SiteState  # green / amber / red on the wall
    worst_severity: str | None
    firing: int
    acknowledged: int


class Overview(BaseModel):
    at: datetime
    devices_registered: int
    devices_online: int
    online_rate: float | None  # 在线率
    alerts_since: datetime
    alerts_today: int  # 今日告警
    alerts_today_by_severity: dict[str, int]
    tasks_open: int  # 处置中任务
    tasks_overdue: int
    sites: list[SiteStatus]


@pages.get("/wall")
async def wall() -> FileResponse:
    return FileResponse(STATIC / "wall.html", media_type="text/html", headers=PAGE_HEADERS)


@pages.get("/m")
async def phone() -> FileResponse:
    return FileResponse(STATIC / "m.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/overview", response_model=Overview)
async def overview(
    principal: CurrentUser,
    conn: Conn,
    now: Now,
    since: Annotated[
        datetime | None, Query(description="Start of 今日 (default: midnight Asia/Shanghai).")
    ] = None,
) -> Overview:
    """The wall's tiles and site colours, for the sites the user may see."""
    if since is not None and since.tzinfo is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "'since' needs a time zone")
    since = since or datetime.combine(now.astimezone(BUREAU_TZ).date(), time(0), BUREAU_TZ)
    scope = principal.scope
    presence = await devices.presence_counts(conn=conn, site_ids=scope)
    today = await alerts.count_detected_since(conn=conn, since=since, site_ids=scope)
    open_tasks = []
    if principal.role is not Role.OPERATOR:
        open_tasks = await inspections.list_visible_tasks(
            conn=conn,
            site_ids=scope,
            assigned_to=principal.username if principal.role is Role.INSPECTOR else None,
            statuses=[TaskStatus.ASSIGNED.value, TaskStatus.IN_PROGRESS.value],
            limit=10000,
        )
    active = await alerts.active_by_site(conn=conn, site_ids=scope)
    registered = presence["registered"]
    return Overview(
        at=now,
        devices_registered=registered,
        devices_online=presence["online"],
        online_rate=None if registered == 0 else round(presence["online"] / registered, 4),
        alerts_since=since,
        alerts_today=sum(today.values()),
        alerts_today_by_severity=today,
        tasks_open=len(open_tasks),
        tasks_overdue=sum(1 for t in open_tasks if t.due_at < now),
        sites=[
            SiteStatus(
                site_id=row["site_id"],
                state=_STATE_OF.get(row["worst_severity"], "ok"),
                worst_severity=row["worst_severity"],
                firing=row["firing"],
                acknowledged=row["acknowledged"],
            )
            for row in active
        ],
    )
