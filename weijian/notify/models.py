"""Shapes of the notification outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class Notification(BaseModel):
    id: int
    created_at: datetime
    channel: str
    recipient: str
    recipient_name: str | None
    recipient_role: str
    template: str
    body: str
    params: dict[str, Any]
    alert_id: int | None
    task_id: int | None
    status: str
    attempts: int
    next_attempt_at: datetime
    sent_at: datetime | None
    provider: str | None
    provider_ref: str | None
    error: str | None


class OutgoingMessage(BaseModel):
    """One SMS to send: what a provider receives."""

    notification_id: int
    recipient: str
    body: str
    template: str
    params: dict[str, Any]
