"""Backtest: replaying stored data shows what would have fired, and what an override changes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.alerts.test_chain import NOW, setup_site, store_batch
from weijian.alerts.backtest import backtest
from weijian.alerts.detectors import catalogue
from weijian.config import Settings
from weijian.db.connection import connect


@pytest.mark.anyio
async def test_backtest_replays_history_and_tries_a_stricter_limit(settings: Settings) -> None:
    _site_id, device_id = await setup_site(settings)
    start = NOW - timedelta(hours=5)
    store_batch(settings, device_id, start=start, hold_s=11 * 60, batch_id="B-1")
    store_batch(
        settings, device_id, start=start + timedelta(hours=1), hold_s=5 * 60, batch_id="B-2"
    )
    detectors = [d for d in catalogue() if d.rule.id == "disinfection.hold_time_short"]
    conn = await connect(settings.database_url)
    async with conn:
        plain = await backtest(
            conn=conn, start=start, end=NOW, step=timedelta(minutes=10), detectors=detectors
        )
        assert [(a.rule, a.episode) for a in plain.raised] == [
            ("disinfection.hold_time_short", "B-2")
        ]
        stricter = await backtest(
            conn=conn,
            start=start,
            end=NOW,
            step=timedelta(minutes=10),
            detectors=detectors,
            overrides={"steam.min_hold_s": 900.0},
        )
        assert sorted(a.episode or "" for a in stricter.raised) == ["B-1", "B-2"]
        assert (await (await conn.execute("SELECT count(*) AS n FROM alerts")).fetchone()) == {
            "n": 0
        }
    with pytest.raises(ValueError, match="after"):
        async with await connect(settings.database_url) as c2:
            await backtest(
                conn=c2, start=NOW, end=start, step=timedelta(minutes=5), detectors=detectors
            )
