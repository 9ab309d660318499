"""A device whose clock runs ahead stamps its data in the future: the evaluation loads it, so
`data.clock_skew` fires when the data arrives, not once the wall clock reaches the stamps."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.factories import drop_devices, make_device, make_site
from weijian.alerts.detectors import catalogue
from weijian.alerts.flows import evaluate_sites
from weijian.alerts.windows import WindowCache
from weijian.config import Settings
from weijian.db.connection import connect

AHEAD = timedelta(minutes=15)


@pytest.mark.parametrize("cached", [False, True])
def test_a_clock_running_ahead_is_caught_on_arrival(
    settings: Settings, event_loop_runner: asyncio.Runner, cached: bool
) -> None:
    site_id = event_loop_runner.run(make_site(settings))
    device = event_loop_runner.run(make_device(settings, site_id))
    now = datetime.now(UTC).replace(microsecond=0)
    cache = WindowCache() if cached else None
    try:
        # Ten minutes of messages every 20 s, each received 15 min before its stamp: every
        # stamp is still in the future at `now`.
        rows = []
        for i in range(30):
            received = now - timedelta(minutes=10) + timedelta(seconds=20 * i)
            rows.append((received + AHEAD, device.device_id, "temp_c", 20.0 + i % 3, i, received))
        with psycopg.connect(settings.database_url) as conn:
            conn.cursor().executemany(
                "INSERT INTO readings (ts, device_id, metric, value, seq, received_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                rows,
            )
            conn.execute(
                "UPDATE devices SET last_seen_at = %s, online = true WHERE id = %s",
                (now, device.device_id),
            )

        async def evaluate() -> list[str]:
            conn = await connect(settings.database_url)
            async with conn:
                if cache is not None:  # a first evaluation fills the cache, as in steady state
                    await evaluate_sites(
                        conn=conn,
                        site_ids=[site_id],
                        detectors=[],
                        now=now - timedelta(minutes=1),
                        rng=random.Random(1),
                        sign="卫生监督所",
                        cache=cache,
                    )
                result = await evaluate_sites(
                    conn=conn,
                    site_ids=[site_id],
                    detectors=catalogue(),
                    now=now,
                    rng=random.Random(1),
                    sign="卫生监督所",
                    cache=cache,
                )
            return [c.rule for c in result.changes if c.kind == "fired"]

        assert "data.clock_skew" in event_loop_runner.run(evaluate())
    finally:
        drop_devices(settings, [device.device_id])
