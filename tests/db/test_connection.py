"""The platform's sessions run in UTC whatever the server's time zone."""

from __future__ import annotations

from datetime import UTC

import psycopg
import pytest

from weijian.db.connection import connect, open_pool


@pytest.mark.anyio
async def test_sessions_return_utc_timestamps_on_a_server_set_to_shanghai(
    database_url: str,
) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        name = admin.info.dbname
        admin.execute(f"ALTER DATABASE \"{name}\" SET timezone = 'Asia/Shanghai'")
    with psycopg.connect(database_url) as plain:  # what a session gets by default
        plain_row = plain.execute("SELECT '2026-11-23 08:00+08'::timestamptz").fetchone()
        assert plain_row is not None
        assert plain_row[0].tzinfo is not UTC
    conn = await connect(database_url)
    async with conn:
        row = await (
            await conn.execute("SELECT '2026-11-23 08:00+08'::timestamptz AS t")
        ).fetchone()
        assert row is not None
        assert row["t"].tzinfo is UTC
        assert row["t"].hour == 0
    pool = await open_pool(database_url, min_size=1, max_size=1)
    async with pool.connection() as pooled:
        row = await (await pooled.execute("SELECT now() AS t")).fetchone()
        assert row is not None
        assert row["t"].tzinfo is UTC
    await pool.close()
