"""Inspection tasks over HTTP: start → conclude → close → publish, and the KPIs."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.api.conftest import NOW, World
from weijian.alerts.models import Severity

pytestmark = pytest.mark.anyio


async def test_task_lifecycle_through_the_api(world: World) -> None:
    alert = await world.fire()
    task = await world.open_task(alert)
    detail = (await world.get("insp-a", f"/api/v1/tasks/{task}")).json()
    assert detail["status"] == "assigned"
    assert detail["due_at"].startswith("2026-11-26T02:00:00")  # major: 72 h
    assert [a["id"] for a in detail["alerts"]] == [alert]
    assert detail["alerts"][0]["rule"] == "disinfection.temperature_low"

    too_early = await world.post("insp-a", f"/api/v1/tasks/{task}/close")
    assert too_early.status_code == 409
    assert too_early.json()["detail"] == f"task {task} is assigned; close needs concluded"

    world.clock.set(NOW + timedelta(hours=2))
    started = await world.post("insp-a", f"/api/v1/tasks/{task}/start")
    assert started.status_code == 200
    assert started.json()["status"] == "in_progress"

    not_a_case = await world.post(
        "insp-b",
        f"/api/v1/tasks/{task}/conclude",
        {"conclusion": "no_violation", "case_filed": True},
    )
    assert not_a_case.status_code == 422
    unknown = await world.post("insp-b", f"/api/v1/tasks/{task}/conclude", {"conclusion": "maybe"})
    assert unknown.status_code == 422

    world.clock.set(NOW + timedelta(hours=5))
    concluded = await world.post(
        "insp-b",
        f"/api/v1/tasks/{task}/conclude",
        {"conclusion": "violation", "case_filed": True, "note": "温度记录造假"},
    )
    assert concluded.status_code == 200, concluded.text
    body = concluded.json()
    assert (body["status"], body["conclusion"], body["case_filed"]) == (
        "concluded",
        "violation",
        True,
    )
    assert body["concluded_at"].startswith("2026-11-23T07:00:00")

    not_yet = await world.post("chief", f"/api/v1/tasks/{task}/publish")
    assert not_yet.status_code == 409
    closed = await world.post("insp-a", f"/api/v1/tasks/{task}/close", {"note": "整改完成"})
    assert closed.json()["status"] == "closed"
    published = await world.post("chief", f"/api/v1/tasks/{task}/publish")  # staff act on any task
    assert published.status_code == 200
    assert published.json()["published_at"] is not None

    history = published.json()["history"]
    assert [(h["action"], h["actor"]) for h in history] == [
        ("opened", "system"),
        ("start", "insp-a"),
        ("conclude", "insp-b"),
        ("close", "insp-a"),
        ("published", "chief"),
    ]
    assert history[2]["note"] == "温度记录造假"
    assert history[2]["details"] == {"conclusion": "violation", "case_filed": True}


async def test_task_filters(world: World) -> None:
    east = await world.open_task(await world.fire())
    west = await world.open_task(
        await world.fire(site_id="site-c", device_id="stm-c1"), site_id="site-c"
    )
    await world.post("chief", f"/api/v1/tasks/{west}/start")

    async def listed(**params: object) -> list[int]:
        response = await world.get("chief", "/api/v1/tasks", **params)
        assert response.status_code == 200, response.text
        return sorted(t["id"] for t in response.json())

    assert await listed() == sorted([east, west])
    assert await listed(status="assigned") == [east]
    assert await listed(status=["assigned", "in_progress"]) == sorted([east, west])
    assert await listed(site_id="site-c") == [west]
    assert (await world.get("chief", "/api/v1/tasks", status="done")).status_code == 422
    assert (await world.get("chief", "/api/v1/tasks/12345")).status_code == 404


async def _run_task(
    world: World,
    *,
    site_id: str,
    device_id: str,
    opened: datetime,
    severity: Severity,
    steps: list[tuple[str, timedelta, dict[str, object] | None]],
) -> int:
    """Open a task at `opened` and take each step (path, delay after opening, body) as chief."""
    alert = await world.fire(site_id=site_id, device_id=device_id, severity=severity, at=opened)
    task = await world.open_task(alert, site_id=site_id, severity=severity, at=opened)
    for step, delay, body in steps:
        world.clock.set(opened + delay)
        response = await world.post("chief", f"/api/v1/tasks/{task}/{step}", body)
        assert response.status_code == 200, response.text
    return task


async def test_kpis_on_a_known_data_set(world: World) -> None:
    days = timedelta(days=1)
    # 1: due NOW-2d; concluded on time (violation, case filed), closed and published.
    await _run_task(
        world,
        site_id="site-a",
        device_id="stm-a1",
        opened=NOW - 5 * days,
        severity=Severity.MAJOR,
        steps=[
            ("start", 1 * days, None),
            ("conclude", 2 * days, {"conclusion": "violation", "case_filed": True}),
            ("close", 3 * days, None),
            ("publish", 4 * days, None),
        ],
    )
    # 2: due NOW-1d; concluded late as a false alarm, not closed.
    await _run_task(
        world,
        site_id="site-b",
        device_id="wse-b1",
        opened=NOW - 4 * days,
        severity=Severity.MAJOR,
        steps=[
            ("start", 1 * days, None),
            ("conclude", timedelta(hours=84), {"conclusion": "false_alarm"}),
        ],
    )
    # 3: critical, due NOW-1d, never concluded (overdue).
    await _run_task(
        world,
        site_id="site-c",
        device_id="stm-c1",
        opened=NOW - 2 * days,
        severity=Severity.CRITICAL,
        steps=[],
    )

    response = await world.get(
        "chief", "/api/v1/kpis", **{"from": (NOW - 7 * days).isoformat(), "to": NOW.isoformat()}
    )
    assert response.status_code == 200, response.text
    k = response.json()
    assert k["from"].startswith("2026-11-16T02:00:00")
    assert k["to"].startswith("2026-11-23T02:00:00")
    counts = {
        key: k[key]
        for key in (
            "due",
            "due_concluded",
            "concluded",
            "on_time",
            "closed",
            "violations",
            "cases",
            "published",
            "false_alarms",
        )
    }
    assert counts == {
        "due": 3,
        "due_concluded": 2,
        "concluded": 2,
        "on_time": 1,
        "closed": 1,
        "violations": 1,
        "cases": 1,
        "published": 1,
        "false_alarms": 1,
    }
    assert k["completion_rate"] == 0.6667  # 完成率 2/3
    assert k["closure_rate"] == 0.5  # 完结率 1/2
    assert k["timeliness_rate"] == 0.5  # 及时率 1/2
    assert k["case_rate"] == 1.0  # 办案率
    assert k["publication_rate"] == 1.0  # 公开率
    assert k["false_alarm_rate"] == 0.5  # 误报率

    empty = (
        await world.get(
            "chief",
            "/api/v1/kpis",
            **{"from": "2020-01-01T00:00:00+08:00", "to": "2020-02-01T00:00:00+08:00"},
        )
    ).json()
    assert empty["due"] == 0
    assert empty["completion_rate"] is None
    naive = await world.get("chief", "/api/v1/kpis", **{"from": "2026-11-01T00:00:00"})
    assert naive.status_code == 400
    assert "time zone" in naive.json()["detail"]
    backwards = await world.get(
        "chief", "/api/v1/kpis", **{"from": NOW.isoformat(), "to": (NOW - days).isoformat()}
    )
    assert backwards.status_code == 400

    world.clock.set(NOW)
    overview = (await world.get("chief", "/api/v1/overview")).json()
    assert (overview["tasks_open"], overview["tasks_overdue"]) == (1, 1)
