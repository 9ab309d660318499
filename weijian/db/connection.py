"""Connection pools and helpers shared by every domain's repository."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

AsyncConn = AsyncConnection[DictRow]

# Every session in UTC, whatever the server's `timezone` setting (Debian's Etc/UTC, or a
# bureau server's Asia/Shanghai): psycopg then returns timestamps with `datetime.timezone.utc`,
# the tzinfo the platform's own clock uses. Timestamps of two different tzinfo objects are
# equal instants but compare and subtract about six times slower (each side's UTC offset is
# looked up), and the detectors compare stored times with `now` millions of times an hour.
# Local dates are always computed in Python (Asia/Shanghai), never by the session.
SESSION_OPTIONS = "-c TimeZone=UTC"


async def open_pool(
    database_url: str, *, min_size: int = 1, max_size: int = 10
) -> AsyncConnectionPool[AsyncConn]:
    """An open async pool whose connections return rows as dicts."""
    pool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": True, "options": SESSION_OPTIONS},
        open=False,
        name="weijian",
    )
    await pool.open(wait=True, timeout=30)
    return pool


async def connect(database_url: str, **kwargs: Any) -> AsyncConn:
    """One async connection returning dict rows (CLI commands, tests)."""
    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("options", SESSION_OPTIONS)
    return await AsyncConnection.connect(database_url, row_factory=dict_row, **kwargs)
