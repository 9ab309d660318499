"""HTTP: the notification outbox (SMS with their delivery status), for the bureau's staff."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from weijian.api.auth import StaffUser
from weijian.api.deps import Conn, Limit
from weijian.notify import service
from weijian.notify.models import Notification

router = APIRouter(tags=["notifications"])

NotificationStatus = Literal["pending", "sent", "failed", "suppressed"]


@router.get("/notifications", response_model=list[Notification])
async def list_notifications(
    _: StaffUser,
    conn: Conn,
    notification_status: Annotated[NotificationStatus | None, Query(alias="status")] = None,
    alert_id: int | None = None,
    task_id: int | None = None,
    limit: Limit = 200,
) -> list[Notification]:
    """Queued and sent messages, newest first (admins and supervisors: they hold phone numbers)."""
    return await service.list_notifications(
        conn=conn, status=notification_status, alert_id=alert_id, task_id=task_id, limit=limit
    )
