"""Readings and events as the platform passes them between stages (ingest, detectors, simulator)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Reading:
    """One metric value of one device at one device time."""

    ts: datetime
    device_id: str
    metric: str
    value: float
    seq: int | None = None
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A discrete device event (batch start/end, bag in/out, ...)."""

    ts: datetime
    device_id: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None
    received_at: datetime | None = None
