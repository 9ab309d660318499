"""Retention drops old chunks and dead letters, and refuses to shorten the legal minimum."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from weijian.config import Settings
from weijian.db.connection import connect
from weijian.db.retention import RetentionPolicy, apply


@pytest.mark.anyio
async def test_old_chunks_are_dropped_and_recent_data_kept(settings: Settings) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(settings.database_url) as conn:
        for age_days in (500, 450, 10, 0):
            ts = now - timedelta(days=age_days)
            conn.execute("INSERT INTO readings VALUES (%s, 'd1', 'temp_c', 1, 1, %s)", (ts, ts))
        conn.execute(
            "INSERT INTO dead_letters (received_at, topic, reason, payload, payload_size)"
            " VALUES (now() - interval '100 days', 't', 'r', 'x', 1), (now(), 't', 'r', 'x', 1)"
        )
    aconn = await connect(settings.database_url)
    async with aconn:
        result = await apply(conn=aconn, policy=RetentionPolicy())
    assert result.readings_chunks == 2
    assert result.dead_letters == 1
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
    assert row == (2,)


def test_policy_refuses_to_drop_waste_records_early() -> None:
    with pytest.raises(ValueError, match="3 years"):
        RetentionPolicy(events=timedelta(days=365))
