"""Shapes of inspection tasks."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel


class TaskStatus(StrEnum):
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    CONCLUDED = "concluded"
    CLOSED = "closed"


class Conclusion(StrEnum):
    VIOLATION = "violation"
    NO_VIOLATION = "no_violation"
    FALSE_ALARM = "false_alarm"


class Task(BaseModel):
    id: int
    site_id: str
    status: TaskStatus
    severity: str
    title: str
    inspectors: list[str]
    opened_at: datetime
    due_at: datetime
    concluded_at: datetime | None
    conclusion: Conclusion | None
    case_filed: bool
    published_at: datetime | None
    closed_at: datetime | None
    alert_ids: list[int]
