"""Reading series for the evidence charts: time_bucket aggregation and the default bucket."""

from __future__ import annotations

from datetime import datetime, timedelta

import anyio
import psycopg
import pytest

from tests.api.conftest import NOW, World
from weijian.config import Settings
from weijian.devices.router import choose_bucket
from weijian.ingest import repository as ingest_repo
from weijian.telemetry import Reading

START = NOW - timedelta(hours=1)


def store_ramp(settings: Settings, device_id: str, start: datetime, count: int) -> None:
    """`count` temp_c readings every 10 s: 0, 1, 2, ... (through the ingest writer)."""
    readings = [
        Reading(start + timedelta(seconds=10 * i), device_id, "temp_c", float(i), i, start)
        for i in range(count)
    ]
    with psycopg.connect(settings.database_url) as conn:
        ingest_repo.prepare(conn)
        ingest_repo.write_batch(conn, readings=readings, events=[], dead=[], presence=[])


@pytest.fixture
async def ramp(world: World, settings: Settings) -> World:
    await anyio.to_thread.run_sync(store_ramp, settings, "stm-a1", START, 360)
    return world


@pytest.mark.anyio
async def test_explicit_bucket_aggregates_avg_min_max_count(ramp: World) -> None:
    response = await ramp.get(
        "chief",
        "/api/v1/readings",
        device_id="stm-a1",
        metric="temp_c",
        bucket="5m",
        **{"from": START.isoformat(), "to": NOW.isoformat()},
    )
    assert response.status_code == 200, response.text
    series = response.json()
    assert series["bucket_seconds"] == 300
    assert series["from"].startswith("2026-11-23T01:00:00")
    points = series["points"]
    assert len(points) == 12
    first, last = points[0], points[-1]
    assert first["ts"].startswith("2026-11-23T01:00:00")
    assert (first["min"], first["max"], first["count"], first["avg"]) == (0.0, 29.0, 30, 14.5)
    assert (last["min"], last["max"], last["count"]) == (330.0, 359.0, 30)
    seconds = await ramp.get(
        "chief",
        "/api/v1/readings",
        device_id="stm-a1",
        metric="temp_c",
        bucket="60",
        **{"from": START.isoformat(), "to": NOW.isoformat()},
    )
    assert len(seconds.json()["points"]) == 60


@pytest.mark.anyio
async def test_default_bucket_keeps_the_series_small(ramp: World) -> None:
    hour = await ramp.get(
        "chief",
        "/api/v1/readings",
        device_id="stm-a1",
        metric="temp_c",
        **{"from": START.isoformat(), "to": NOW.isoformat()},
    )
    assert hour.json()["bucket_seconds"] == 10
    assert len(hour.json()["points"]) == 360
    # Default window: the 24 h before the platform clock.
    day = await ramp.get("chief", "/api/v1/readings", device_id="stm-a1", metric="temp_c")
    assert day.json()["bucket_seconds"] == 300
    assert len(day.json()["points"]) == 12


@pytest.mark.anyio
async def test_bad_requests_are_explained(ramp: World) -> None:
    async def status_and_detail(username: str = "chief", **params: object) -> tuple[int, str]:
        response = await ramp.get(username, "/api/v1/readings", **params)
        return response.status_code, str(response.json().get("detail"))

    code, detail = await status_and_detail(device_id="stm-a1", metric="chlorine_mg_l")
    assert code == 400
    assert detail == "a steam_cabinet has no metric 'chlorine_mg_l' (it reports: door_open, temp_c)"
    code, detail = await status_and_detail(device_id="stm-a1", metric="temp_c", bucket="fast")
    assert code == 400
    assert detail.startswith("invalid bucket 'fast'")
    code, detail = await status_and_detail(device_id="stm-a1", metric="temp_c", bucket="1s")
    assert code == 400
    assert "more than 5000 points" in detail
    assert (await status_and_detail(device_id="nope", metric="temp_c"))[0] == 404
    assert (await status_and_detail("op-a", device_id="stm-c1", metric="temp_c"))[0] == 404
    assert (await status_and_detail("op-a", device_id="stm-a1", metric="temp_c"))[0] == 200
    assert (await status_and_detail(device_id="stm-a1"))[0] == 422


def test_choose_bucket_targets_about_500_points() -> None:
    assert choose_bucket(timedelta(minutes=10)) == timedelta(seconds=2)
    assert choose_bucket(timedelta(hours=1)) == timedelta(seconds=10)
    assert choose_bucket(timedelta(days=1)) == timedelta(minutes=5)
    assert choose_bucket(timedelta(days=30)) == timedelta(hours=2)
    assert choose_bucket(timedelta(days=3650)) == timedelta(days=8)
    for span in (timedelta(seconds=s) for s in (30, 999, 86400 * 7, 86400 * 400)):
        assert span / choose_bucket(span) <= 500
