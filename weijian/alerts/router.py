"""HTTP: alerts (list, detail with history, acknowledge, resolve) and the rule catalogue."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from weijian.alerts import service
from weijian.alerts.models import Alert, AlertStatus
from weijian.alerts.rules import RULES
from weijian.api.auth import BureauUser, CurrentUser, Principal
from weijian.api.deps import Conn, Limit, Now
from weijian.api.live import announce_alert
from weijian.db.connection import AsyncConn

router = APIRouter(tags=["alerts"])


class Rule(BaseModel):
    id: str
    name_zh: str
    name_en: str
    source: str
    level: str


class HistoryEntry(BaseModel):
    at: datetime
    action: str
    from_status: str | None
    to_status: str | None
    severity: str | None
    actor: str
    note: str | None
    details: dict[str, Any]


class AlertDetail(Alert):
    history: list[HistoryEntry]


class AckBody(BaseModel):
    note: str | None = Field(default=None, max_length=2000)


class ResolveBody(BaseModel):
    note: str = Field(min_length=1, max_length=2000, description="Why it is resolved (recorded).")


@router.get("/rules", response_model=list[Rule])
async def list_rules(_: CurrentUser) -> list[Rule]:
    """The rule catalogue: stable ids, Chinese and English names, and the source each applies."""
    return [
        Rule(id=r.id, name_zh=r.name_zh, name_en=r.name_en, source=r.source, level=r.level)
        for r in RULES.values()
    ]


@router.get("/alerts", response_model=list[Alert])
async def list_alerts(
    *,
    principal: CurrentUser,
    conn: Conn,
    alert_status: Annotated[AlertStatus | None, Query(alias="status")] = None,
    site_id: str | None = None,
    rule: Annotated[str | None, Query(description="A rule id from /rules.")] = None,
    limit: Limit = 100,
) -> list[Alert]:
    """Alerts of the sites the user may see, newest first."""
    if rule is not None and rule not in RULES:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"unknown rule {rule!r}; one of: {', '.join(sorted(RULES))}",
        )
    return await service.list_alerts(
        conn=conn,
        status=None if alert_status is None else alert_status.value,
        site_id=site_id,
        rule=rule,
        site_ids=principal.scope,
        limit=limit,
    )


async def _visible(conn: AsyncConn, principal: Principal, alert_id: int) -> Alert:
    alert = await service.get_alert(conn=conn, alert_id=alert_id)
    if alert is None or not principal.sees_site(alert.site_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert {alert_id}")
    return alert


async def _detail(conn: AsyncConn, alert: Alert) -> AlertDetail:
    history = await service.alert_history(conn=conn, alert_id=alert.id)
    return AlertDetail(
        **alert.model_dump(), history=[HistoryEntry.model_validate(h) for h in history]
    )


@router.get("/alerts/{alert_id}", response_model=AlertDetail)
async def get_alert(alert_id: int, principal: CurrentUser, conn: Conn) -> AlertDetail:
    """An alert with its full history (every transition, with actor and time)."""
    return await _detail(conn, await _visible(conn, principal, alert_id))


@router.post("/alerts/{alert_id}/ack", response_model=AlertDetail)
async def acknowledge(
    alert_id: int, principal: BureauUser, conn: Conn, now: Now, body: AckBody | None = None
) -> AlertDetail:
    """firing → acknowledged (bureau staff and the district's inspectors)."""
    await _visible(conn, principal, alert_id)
    async with conn.transaction():
        alert = await service.acknowledge(
            conn=conn,
            alert_id=alert_id,
            actor=principal.username,
            now=now,
            note=body.note if body else None,
        )
        await announce_alert(conn=conn, kind="acknowledged", alert=alert)
    return await _detail(conn, alert)


@router.post("/alerts/{alert_id}/resolve", response_model=AlertDetail)
async def resolve(
    alert_id: int, body: ResolveBody, principal: BureauUser, conn: Conn, now: Now
) -> AlertDetail:
    """Resolve an alert by hand, with a note saying why."""
    await _visible(conn, principal, alert_id)
    async with conn.transaction():
        alert = await service.resolve(
            conn=conn, alert_id=alert_id, actor=principal.username, now=now, note=body.note
        )
        await announce_alert(conn=conn, kind="resolved", alert=alert)
    return await _detail(conn, alert)
