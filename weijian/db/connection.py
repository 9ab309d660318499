"""Connection pools and helpers shared by every domain's repository."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

AsyncConn = AsyncConnection[DictRow]


async def open_pool(
    database_url: str, *, min_size: int = 1, max_size: int = 10
) -> AsyncConnectionPool[AsyncConn]:
    """An open async pool whose connections return rows as dicts."""
    pool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": True},
        open=False,
        name="weijian",
    )
    await pool.open(wait=True, timeout=30)
    return pool


async def connect(database_url: str, **kwargs: Any) -> AsyncConn:
    """One async connection returning dict rows (CLI commands, tests)."""
    kwargs.setdefault("autocommit", True)
    return await AsyncConnection.connect(database_url, row_factory=dict_row, **kwargs)
