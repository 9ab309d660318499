"""All SQL of the API layer: platform secrets, the health probe, and LISTEN/NOTIFY."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from psycopg import sql

from weijian.db.connection import AsyncConn


async def get_or_create_secret(*, conn: AsyncConn, name: str, candidate: str) -> str:
    """The stored secret `name`; `candidate` is stored first if there is none.

    INSERT … ON CONFLICT DO NOTHING then SELECT: processes starting at the same time all end up
    with the value of whichever insert won.
    """
    await conn.execute(
        "INSERT INTO app_secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (name, candidate),
    )
    cur = await conn.execute("SELECT value FROM app_secrets WHERE name = %s", (name,))
    row = await cur.fetchone()
    assert row is not None
    return str(row["value"])


async def ping(*, conn: AsyncConn) -> None:
    """A round trip to the database (health probe)."""
    await conn.execute("SELECT 1")


async def notify(*, conn: AsyncConn, channel: str, payload: Mapping[str, Any]) -> None:
    """pg_notify in the caller's transaction: delivered to listeners when it commits."""
    await conn.execute("SELECT pg_notify(%s, %s)", (channel, orjson.dumps(payload).decode()))


async def listen(*, conn: AsyncConn, channels: Sequence[str]) -> None:
    """Subscribe a (dedicated, autocommit) connection to notification channels."""
    for channel in channels:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
