"""The behaviour-model trainer fits per-device models from stored history."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.factories import make_site
from weijian.alerts.anomaly import AnomalyDetector
from weijian.alerts.detectors import catalogue
from weijian.alerts.jobs import ModelTrainer
from weijian.clock import ManualClock
from weijian.config import Settings
from weijian.db.connection import connect, open_pool
from weijian.devices import repository as devices_repo
from weijian.ingest import repository as ingest_repo
from weijian.telemetry import Reading

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


@pytest.mark.anyio
async def test_models_are_fitted_for_devices_with_history(settings: Settings) -> None:
    site = await make_site(settings)
    conn = await connect(settings.database_url)
    async with conn:
        await devices_repo.insert_device(
            conn=conn,
            device_id="dish-1",
            site_id=site,
            kind="dish_machine",
            name=None,
            interval_s=60,
        )
        await devices_repo.insert_device(
            conn=conn,
            device_id="dish-quiet",
            site_id=site,
            kind="dish_machine",
            name=None,
            interval_s=60,
        )
    readings = []
    for i in range(600):
        ts = NOW - timedelta(minutes=600 - i)
        wave = math.sin(i / 20)
        readings += [
            Reading(ts, "dish-1", "wash_temp_c", 60 + wave, i, ts),
            Reading(ts, "dish-1", "rinse_temp_c", 88 + wave, i, ts),
            Reading(ts, "dish-1", "conveyor_speed_m_min", 1.2, i, ts),
            Reading(ts, "dish-1", "running", 1, i, ts),
        ]
    with psycopg.connect(settings.database_url) as sync:
        ingest_repo.prepare(sync)
        ingest_repo.write_batch(sync, readings=readings, events=[], dead=[], presence=[])
    detectors = catalogue()
    pool = await open_pool(settings.database_url, min_size=1, max_size=2)
    try:
        trainer = ModelTrainer(pool=pool, detectors=detectors, clock=ManualClock(NOW))
        assert await trainer.train_once() == 1
    finally:
        await pool.close()
    anomaly = next(d for d in detectors if isinstance(d, AnomalyDetector))
    assert set(anomaly.models) == {"dish-1"}
