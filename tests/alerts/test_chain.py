"""Alert → inspection task → SMS outbox → console delivery, against the real database."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.factories import make_site, make_user
from weijian.alerts.detectors import catalogue
from weijian.alerts.flows import evaluate_sites
from weijian.config import Settings
from weijian.db.connection import connect
from weijian.devices import repository as devices_repo
from weijian.ingest import repository as ingest_repo
from weijian.notify.providers import ConsoleProvider
from weijian.notify.service import dispatch_due
from weijian.telemetry import Event, Reading

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def store_batch(
    settings: Settings,
    device_id: str,
    *,
    start: datetime,
    hold_s: int,
    batch_id: str,
    temp: float = 104.0,
) -> datetime:
    """A batch: 2 min heating, `hold_s` at `temp`, then cooling; readings every 10 s."""
    readings = []
    t = start
    end_hold = start + timedelta(seconds=120 + hold_s)
    while t <= end_hold + timedelta(seconds=60):
        value = 80.0 if t < start + timedelta(seconds=120) else (temp if t <= end_hold else 85.0)
        readings.append(Reading(t, device_id, "temp_c", value, None, t))
        t += timedelta(seconds=10)
    end = end_hold + timedelta(seconds=60)
    events = [
        Event(start, device_id, "batch_start", {"batch_id": batch_id}, None, start),
        Event(end, device_id, "batch_end", {"batch_id": batch_id}, None, end),
    ]
    with psycopg.connect(settings.database_url) as conn:
        ingest_repo.prepare(conn)
        ingest_repo.write_batch(conn, readings=readings, events=events, dead=[], presence=[])
    return end


async def setup_site(settings: Settings) -> tuple[str, str]:
    site_id = await make_site(settings, district="城东区", phones=["13800000001"])
    conn = await connect(settings.database_url)
    async with conn:
        await devices_repo.insert_device(
            conn=conn,
            device_id="stm-chain",
            site_id=site_id,
            kind="steam_cabinet",
            name="1号柜",
            interval_s=10,
        )
    for i in range(4):
        await make_user(settings, username=f"insp{i}", phone=f"1390000000{i}")
    await make_user(settings, username="far", district="城西区", phone="13900000009")
    return site_id, "stm-chain"


@pytest.mark.anyio
async def test_short_hold_opens_a_task_for_two_district_inspectors_and_texts_everyone(
    settings: Settings,
) -> None:
    site_id, device_id = await setup_site(settings)
    end = store_batch(
        settings, device_id, start=NOW - timedelta(minutes=30), hold_s=9 * 60, batch_id="B-1"
    )
    now = end + timedelta(seconds=5)
    conn = await connect(settings.database_url)
    async with conn:
        result = await evaluate_sites(
            conn=conn,
            site_ids=[site_id],
            detectors=catalogue(),
            now=now,
            rng=random.Random(1),
            sign="卫生监督所",
        )
        assert [c.kind for c in result.changes] == ["fired"]
        alert = (await (await conn.execute("SELECT * FROM alerts")).fetchall())[0]
        assert alert["rule"] == "disinfection.hold_time_short"
        assert alert["severity"] == "major"
        assert alert["value"] == 9 * 60
        assert alert["limit_value"] == 600
        assert "餐饮服务食品安全操作规范" in alert["source"]
        assert alert["evidence_metric"] == "temp_c"

        task = (await (await conn.execute("SELECT * FROM inspection_tasks")).fetchall())[0]
        assert task["site_id"] == site_id
        assert len(task["inspectors"]) == 2
        assert set(task["inspectors"]) <= {"insp0", "insp1", "insp2", "insp3"}
        assert task["due_at"] == now + timedelta(hours=72)
        history = await (await conn.execute("SELECT action, actor FROM task_history")).fetchall()
        assert history == [{"action": "opened", "actor": "system"}]

        notes = await (
            await conn.execute(
                "SELECT recipient_role, recipient, body, status FROM notifications ORDER BY id"
            )
        ).fetchall()
        assert [n["recipient_role"] for n in notes] == ["site", "inspector", "inspector"]
        assert notes[0]["recipient"] == "13800000001"
        assert "消毒保持时间不足" in notes[0]["body"]
        assert all(n["status"] == "pending" for n in notes)

        async with conn.transaction():
            sent = await dispatch_due(
                conn=conn, provider=ConsoleProvider(), now=now, rate_per_hour=20
            )
        assert sent == 3
        statuses = await (
            await conn.execute("SELECT DISTINCT status, provider FROM notifications")
        ).fetchall()
        assert statuses == [{"status": "sent", "provider": "console"}]

        # Evaluating again does not raise the same batch twice.
        again = await evaluate_sites(
            conn=conn,
            site_ids=[site_id],
            detectors=catalogue(),
            now=now + timedelta(seconds=30),
            rng=random.Random(1),
            sign="x",
        )
        assert again.changes == []
        assert (await (await conn.execute("SELECT count(*) AS n FROM alerts")).fetchone()) == {
            "n": 1
        }


@pytest.mark.anyio
async def test_compliant_batch_resolves_and_second_alert_joins_the_open_task(
    settings: Settings,
) -> None:
    site_id, device_id = await setup_site(settings)
    end1 = store_batch(
        settings, device_id, start=NOW - timedelta(hours=2), hold_s=5 * 60, batch_id="B-1"
    )
    conn = await connect(settings.database_url)
    async with conn:
        await evaluate_sites(
            conn=conn,
            site_ids=[site_id],
            detectors=catalogue(),
            now=end1 + timedelta(seconds=1),
            rng=random.Random(2),
            sign="x",
        )
        end2 = store_batch(
            settings, device_id, start=end1 + timedelta(minutes=5), hold_s=12 * 60, batch_id="B-2"
        )
        result = await evaluate_sites(
            conn=conn,
            site_ids=[site_id],
            detectors=catalogue(),
            now=end2 + timedelta(seconds=1),
            rng=random.Random(2),
            sign="x",
        )
        assert [c.kind for c in result.changes] == ["resolved"]
        actions = await (
            await conn.execute("SELECT action FROM alert_history ORDER BY id")
        ).fetchall()
        assert [a["action"] for a in actions] == ["fired", "resolved"]

        end3 = store_batch(
            settings,
            device_id,
            start=end2 + timedelta(minutes=5),
            hold_s=60,
            batch_id="B-3",
            temp=98.0,
        )
        result = await evaluate_sites(
            conn=conn,
            site_ids=[site_id],
            detectors=catalogue(),
            now=end3 + timedelta(seconds=1),
            rng=random.Random(2),
            sign="x",
        )
        assert [(c.kind, c.rule) for c in result.changes] == [
            ("fired", "disinfection.temperature_low")
        ]
        tasks = await (await conn.execute("SELECT id FROM inspection_tasks")).fetchall()
        assert len(tasks) == 1
        links = await (await conn.execute("SELECT count(*) AS n FROM task_alerts")).fetchone()
        assert links == {"n": 2}
        joined = await (
            await conn.execute("SELECT action FROM task_history ORDER BY id")
        ).fetchall()
        assert [j["action"] for j in joined] == ["opened", "alert_joined"]


@pytest.mark.anyio
async def test_histories_are_append_only(settings: Settings) -> None:
    site_id, device_id = await setup_site(settings)
    end = store_batch(
        settings, device_id, start=NOW - timedelta(minutes=30), hold_s=60, batch_id="B-1"
    )
    conn = await connect(settings.database_url)
    async with conn:
        await evaluate_sites(
            conn=conn,
            site_ids=[site_id],
            detectors=catalogue(),
            now=end + timedelta(seconds=1),
            rng=random.Random(3),
            sign="x",
        )
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            await conn.execute("UPDATE task_history SET actor = 'someone'")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            await conn.execute("DELETE FROM alert_history")


@pytest.mark.anyio
async def test_backlog_older_than_the_lookback_is_judged_when_it_arrives(
    settings: Settings,
) -> None:
    """A device back after a 6-hour outage sends its backlog; its bad batch still raises."""
    site_id, device_id = await setup_site(settings)
    start = NOW - timedelta(hours=6)
    store_batch(settings, device_id, start=start, hold_s=60, batch_id="B-old")
    conn = await connect(settings.database_url)
    async with conn:
        plain = await evaluate_sites(
            conn=conn,
            site_ids=[site_id],
            detectors=catalogue(),
            now=NOW,
            rng=random.Random(1),
            sign="x",
        )
        assert plain.changes == []  # outside the detectors' usual look-back
        late = await evaluate_sites(
            conn=conn,
            site_ids=[site_id],
            detectors=catalogue(),
            now=NOW,
            rng=random.Random(1),
            sign="x",
            since={site_id: start},
        )
        assert [c.rule for c in late.changes] == ["disinfection.hold_time_short"]
