"""All SQL of the notification outbox."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from weijian.db.connection import AsyncConn
from weijian.notify.models import Notification

_COLUMNS = (
    "id, created_at, channel, recipient, recipient_name, recipient_role, template, body, params,"
    " alert_id, task_id, status, attempts, next_attempt_at, sent_at, provider, provider_ref, error"
)


async def enqueue(
    *,
    conn: AsyncConn,
    recipient: str,
    recipient_name: str | None,
    recipient_role: str,
    template: str,
    body: str,
    params: dict[str, Any],
    alert_id: int | None,
    task_id: int | None,
    at: datetime,
) -> int:
    cur = await conn.execute(
        "INSERT INTO notifications (recipient, recipient_name, recipient_role, template, body,"
        " params, alert_id, task_id, created_at, next_attempt_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            recipient,
            recipient_name,
            recipient_role,
            template,
            body,
            Jsonb(params),
            alert_id,
            task_id,
            at,
            at,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


async def claim_due(*, conn: AsyncConn, now: datetime, limit: int) -> list[Notification]:
    """Pending notifications due now, locked so that parallel dispatchers skip them."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM notifications WHERE status = 'pending' AND next_attempt_at <= %s"
        " ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
        (now, limit),
    )
    return [Notification.model_validate(r) for r in await cur.fetchall()]


async def sent_since(*, conn: AsyncConn, recipient: str, since: datetime) -> int:
    cur = await conn.execute(
        "SELECT count(*) AS n FROM notifications WHERE recipient = %s AND status = 'sent'"
        " AND sent_at >= %s",
        (recipient, since),
    )
    row = await cur.fetchone()
    return 0 if row is None else int(row["n"])


async def mark(*, conn: AsyncConn, notification_id: int, values: dict[str, Any]) -> None:
    assignments = ", ".join(f"{k} = %({k})s" for k in values)
    await conn.execute(
        f"UPDATE notifications SET {assignments} WHERE id = %(_id)s",
        {**values, "_id": notification_id},
    )


async def list_notifications(
    *,
    conn: AsyncConn,
    status: str | None = None,
    alert_id: int | None = None,
    task_id: int | None = None,
    limit: int = 200,
) -> list[Notification]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM notifications"
        " WHERE (%(status)s::text IS NULL OR status = %(status)s)"
        "   AND (%(alert)s::bigint IS NULL OR alert_id = %(alert)s)"
        "   AND (%(task)s::bigint IS NULL OR task_id = %(task)s)"
        " ORDER BY id DESC LIMIT %(limit)s",
        {"status": status, "alert": alert_id, "task": task_id, "limit": limit},
    )
    return [Notification.model_validate(r) for r in await cur.fetchall()]


async def recipients_of_alerts(*, conn: AsyncConn, alert_ids: Sequence[int]) -> list[str]:
    cur = await conn.execute(
        "SELECT DISTINCT recipient FROM notifications WHERE alert_id = ANY(%s)", (list(alert_ids),)
    )
    return [str(r["recipient"]) for r in await cur.fetchall()]
