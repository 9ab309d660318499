"""Notifications: the outbox (written in the caller's transaction) and its dispatcher."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from weijian.alerts.models import Severity
from weijian.alerts.rules import rule as rule_spec
from weijian.db.connection import AsyncConn
from weijian.devices.models import Site
from weijian.notify import repository
from weijian.notify.models import Notification, OutgoingMessage
from weijian.notify.providers import SmsProvider
from weijian.notify.templates import render
from weijian.users.models import User

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
# Severities whose alerts are texted to the site.
SITE_SEVERITIES = frozenset({Severity.WARNING, Severity.MAJOR, Severity.CRITICAL})


def _due_text(due_at: datetime) -> str:
    local = due_at.astimezone(_SHANGHAI)
    return local.strftime("%m月%d日%H:%M")


try:
    from zoneinfo import ZoneInfo

    _SHANGHAI = ZoneInfo("Asia/Shanghai")
except Exception:  # pragma: no cover - tzdata is part of every supported platform
    from datetime import UTC as _SHANGHAI  # type: ignore[assignment]


async def notify_alert(
    *,
    conn: AsyncConn,
    alert_id: int,
    rule: str,
    severity: Severity,
    summary: str,
    site: Site,
    sign: str,
    now: datetime,
) -> list[int]:
    """Queue the SMS to the site's contact phones for a newly fired alert."""
    if severity not in SITE_SEVERITIES:
        return []
    spec = rule_spec(rule)
    params = {
        "sign": sign,
        "site": site.name,
        "summary": summary,
        "rule_name": spec.name_zh,
        "source": spec.source,
        "rule": rule,
    }
    ids = []
    for phone in site.phones:
        ids.append(
            await repository.enqueue(
                conn=conn,
                recipient=phone,
                recipient_name=site.name,
                recipient_role="site",
                template="alert_site",
                body=render("alert_site", params),
                params=params,
                alert_id=alert_id,
                task_id=None,
                at=now,
            )
        )
    return ids


async def notify_inspectors(
    *,
    conn: AsyncConn,
    task_id: int,
    alert_id: int,
    opened: bool,
    inspectors: list[User],
    site: Site,
    summary: str,
    due_at: datetime,
    sign: str,
    now: datetime,
) -> list[int]:
    """Queue the SMS to a task's inspectors (new task, or a new alert joining it)."""
    template = "task_assigned" if opened else "task_alert_joined"
    params = {
        "sign": sign,
        "site": site.name,
        "summary": summary,
        "task_id": task_id,
        "due": _due_text(due_at),
    }
    ids = []
    for user in inspectors:
        if not user.phone:
            log.warning("inspector %s has no phone; task %d not texted", user.username, task_id)
            continue
        ids.append(
            await repository.enqueue(
                conn=conn,
                recipient=user.phone,
                recipient_name=user.name,
                recipient_role="inspector",
                template=template,
                body=render(template, params),
                params=params,
                alert_id=alert_id,
                task_id=task_id,
                at=now,
            )
        )
    return ids


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(30 * 2 ** (attempts - 1), 3600))


async def dispatch_due(
    *, conn: AsyncConn, provider: SmsProvider, now: datetime, rate_per_hour: int, limit: int = 100
) -> int:
    """Send what is due, in the caller's transaction; returns how many were handled."""
    due = await repository.claim_due(conn=conn, now=now, limit=limit)
    for notification in due:
        await _dispatch_one(conn, provider, notification, now, rate_per_hour)
    return len(due)


async def _dispatch_one(
    conn: AsyncConn, provider: SmsProvider, n: Notification, now: datetime, rate_per_hour: int
) -> None:
    if (
        await repository.sent_since(
            conn=conn, recipient=n.recipient, since=now - timedelta(hours=1)
        )
        >= rate_per_hour
    ):
        # Over the recipient's hourly limit: hold it, do not drop it.
        await repository.mark(
            conn=conn,
            notification_id=n.id,
            values={
                "next_attempt_at": now + timedelta(minutes=10),
                "error": f"rate limit of {rate_per_hour}/h to this recipient",
            },
        )
        return
    message = OutgoingMessage(
        notification_id=n.id,
        recipient=n.recipient,
        body=n.body,
        template=n.template,
        params=n.params,
    )
    delivery = await asyncio.to_thread(provider.send, message)
    attempts = n.attempts + 1
    if delivery.ok:
        await repository.mark(
            conn=conn,
            notification_id=n.id,
            values={
                "status": "sent",
                "sent_at": now,
                "attempts": attempts,
                "provider": provider.name,
                "provider_ref": delivery.reference,
                "error": None,
            },
        )
        return
    give_up = not delivery.retryable or attempts >= MAX_ATTEMPTS
    await repository.mark(
        conn=conn,
        notification_id=n.id,
        values={
            "status": "failed" if give_up else "pending",
            "attempts": attempts,
            "provider": provider.name,
            "error": delivery.error,
            "next_attempt_at": now + _backoff(attempts),
        },
    )
    log.warning("SMS %d to %s failed (attempt %d): %s", n.id, n.recipient, attempts, delivery.error)


async def list_notifications(
    *,
    conn: AsyncConn,
    status: str | None = None,
    alert_id: int | None = None,
    task_id: int | None = None,
    limit: int = 200,
) -> list[Notification]:
    return await repository.list_notifications(
        conn=conn, status=status, alert_id=alert_id, task_id=task_id, limit=limit
    )
