"""Dependencies shared by the routers: a database connection per request, the clock, time ranges."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from psycopg_pool import AsyncConnectionPool

from weijian.clock import Clock
from weijian.config import Settings
from weijian.db.connection import AsyncConn

# How long a request waits for a pooled connection before answering 503.
CONNECTION_WAIT_S = 10.0


def get_pool(request: Request) -> AsyncConnectionPool[AsyncConn]:
    pool: AsyncConnectionPool[AsyncConn] | None = getattr(request.app.state, "pool", None)
    if pool is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the database pool is not open")
    return pool


async def get_conn(
    pool: Annotated[AsyncConnectionPool[AsyncConn], Depends(get_pool)],
) -> AsyncIterator[AsyncConn]:
    """A pooled connection (autocommit) for the request; use `conn.transaction()` for writes."""
    async with pool.connection(timeout=min(pool.timeout, CONNECTION_WAIT_S)) as conn:
        yield conn


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_clock(request: Request) -> Clock:
    clock: Clock = request.app.state.clock
    return clock


def now(clock: Annotated[Clock, Depends(get_clock)]) -> datetime:
    return clock.now()


Conn = Annotated[AsyncConn, Depends(get_conn)]
Now = Annotated[datetime, Depends(now)]


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @property
    def span(self) -> timedelta:
        return self.end - self.start


def time_range(
    start: datetime | None, end: datetime | None, *, now: datetime, default_span: timedelta
) -> TimeRange:
    """[from, to) with defaults (to = now, from = to − default_span); both must carry a zone."""
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                f"'{name}' needs a time zone, e.g. 2026-11-23T08:00:00+08:00 or …Z",
            )
    end = end or now
    start = start or end - default_span
    if start >= end:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "'from' must be before 'to'")
    return TimeRange(start, end)


FromQuery = Annotated[
    datetime | None, Query(alias="from", description="Start (inclusive), ISO 8601 with offset.")
]
ToQuery = Annotated[
    datetime | None, Query(alias="to", description="End (exclusive), ISO 8601 with offset.")
]
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many rows (newest first).")]
