"""Retention: drop old time-series chunks (TimescaleDB `drop_chunks`) and old dead letters.

The Apache build of TimescaleDB has no retention policies, so the platform runs this itself
(daily in `weijian up`, or `weijian retention`). Waste movements are events and must be kept
at least three years (医疗废物管理条例 §12), hence the long default for events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from weijian.db.connection import AsyncConn

MIN_EVENTS_RETENTION = timedelta(days=3 * 366)


@dataclass(frozen=True)
class RetentionPolicy:
    readings: timedelta = timedelta(days=400)
    events: timedelta = timedelta(days=3 * 366 + 30)
    dead_letters: timedelta = timedelta(days=90)

    def __post_init__(self) -> None:
        if self.events < MIN_EVENTS_RETENTION:
            raise ValueError(
                "events (waste movements) must be kept at least 3 years (医疗废物管理条例 §12)"
            )
        if self.readings <= timedelta(days=7):
            raise ValueError(
                "keep readings longer than 7 days: detectors and backtests look back that far"
            )


@dataclass(frozen=True)
class RetentionResult:
    readings_chunks: int
    events_chunks: int
    dead_letters: int


async def apply(*, conn: AsyncConn, policy: RetentionPolicy) -> RetentionResult:
    """Drop what is older than the policy allows; returns what was removed."""
    readings = await conn.execute(
        "SELECT drop_chunks('readings', older_than => now() - %s::interval)", (policy.readings,)
    )
    events = await conn.execute(
        "SELECT drop_chunks('events', older_than => now() - %s::interval)", (policy.events,)
    )
    dead = await conn.execute(
        "DELETE FROM dead_letters WHERE received_at < now() - %s::interval", (policy.dead_letters,)
    )
    return RetentionResult(
        len(await readings.fetchall()), len(await events.fetchall()), dead.rowcount
    )
