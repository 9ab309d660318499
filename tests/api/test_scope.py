"""Who sees what: operators their own sites, inspectors their district and their own tasks."""

from __future__ import annotations

import pytest

from tests.api.conftest import World
from weijian.alerts.models import Severity
from weijian.users import service as users
from weijian.users.models import Role, UserCreate

pytestmark = pytest.mark.anyio


def ids(rows: list[dict[str, object]], key: str = "id") -> list[object]:
    return sorted(r[key] for r in rows)  # type: ignore[type-var]


async def test_operator_sees_only_its_own_site(world: World) -> None:
    alert_a = await world.fire(site_id="site-a", device_id="stm-a1")
    alert_c = await world.fire(site_id="site-c", device_id="stm-c1")

    sites = await world.get("op-a", "/api/v1/sites")
    assert ids(sites.json()) == ["site-a"]
    devices = await world.get("op-a", "/api/v1/devices")
    assert ids(devices.json()) == ["stm-a1", "stm-a2"]
    # Asking for another site's devices finds nothing rather than leaking them.
    assert (await world.get("op-a", "/api/v1/devices", site_id="site-c")).json() == []
    alerts = await world.get("op-a", "/api/v1/alerts")
    assert ids(alerts.json()) == [alert_a]
    assert (await world.get("op-a", f"/api/v1/alerts/{alert_c}")).status_code == 404
    assert (await world.get("op-a", "/api/v1/sites/site-c")).status_code == 404
    assert (await world.get("op-a", "/api/v1/sites/site-a")).json()["name"] == "城东餐具消毒中心"
    overview = (await world.get("op-a", "/api/v1/overview")).json()
    assert overview["devices_registered"] == 2
    assert [s["site_id"] for s in overview["sites"]] == ["site-a"]


async def test_operator_may_not_see_tasks_notifications_or_act(world: World) -> None:
    alert = await world.fire()
    task = await world.open_task(alert)
    for url in (
        "/api/v1/tasks",
        f"/api/v1/tasks/{task}",
        "/api/v1/notifications",
        "/api/v1/kpis",
        "/api/v1/users",
    ):
        response = await world.get("op-a", url)
        assert response.status_code == 403, url
        assert "role operator may not" in response.json()["detail"]
    assert (await world.post("op-a", f"/api/v1/alerts/{alert}/ack")).status_code == 403
    assert (await world.post("op-a", f"/api/v1/tasks/{task}/start")).status_code == 403


async def test_inspector_sees_its_district(world: World) -> None:
    await world.fire(site_id="site-a", device_id="stm-a1")
    await world.fire(
        site_id="site-b",
        device_id="wse-b1",
        rule="waste.door_open_long",
        severity=Severity.WARNING,
        metric="door_open",
    )
    west = await world.fire(site_id="site-c", device_id="stm-c1")
    assert ids((await world.get("insp-a", "/api/v1/sites")).json()) == ["site-a", "site-b"]
    assert ids((await world.get("insp-c", "/api/v1/sites")).json()) == ["site-c"]
    east_alerts = (await world.get("insp-a", "/api/v1/alerts")).json()
    assert {a["site_id"] for a in east_alerts} == {"site-a", "site-b"}
    assert (await world.get("insp-a", f"/api/v1/alerts/{west}")).status_code == 404
    # The bureau's staff see everything.
    assert ids((await world.get("chief", "/api/v1/sites")).json()) == ["site-a", "site-b", "site-c"]
    assert len((await world.get("admin", "/api/v1/alerts")).json()) == 3


async def test_inspector_acts_only_on_its_own_tasks(world: World) -> None:
    task = await world.open_task(await world.fire())
    detail = (await world.get("chief", f"/api/v1/tasks/{task}")).json()
    assert sorted(detail["inspectors"]) == ["insp-a", "insp-b"]  # the whole 城东区 roster
    west_task = await world.open_task(
        await world.fire(site_id="site-c", device_id="stm-c1"), site_id="site-c"
    )

    # insp-c (城西区) cannot see the 城东区 task at all, and insp-a cannot see the 城西区 one.
    assert (await world.get("insp-c", f"/api/v1/tasks/{task}")).status_code == 404
    assert (await world.post("insp-c", f"/api/v1/tasks/{task}/start")).status_code == 404
    assert (await world.get("insp-a", f"/api/v1/tasks/{west_task}")).status_code == 404
    assert ids((await world.get("insp-a", "/api/v1/tasks")).json()) == [task]
    assert ids((await world.get("insp-c", "/api/v1/tasks", mine="true")).json()) == [west_task]
    assert ids((await world.get("chief", "/api/v1/tasks")).json()) == sorted([task, west_task])
    # The supervisor is nobody's inspector: "mine" is empty for it.
    assert (await world.get("chief", "/api/v1/tasks", mine="true")).json() == []

    started = await world.post("insp-a", f"/api/v1/tasks/{task}/start", {"note": "出发"})
    assert started.status_code == 200
    assert started.json()["status"] == "in_progress"


async def test_inspector_sees_but_cannot_act_on_a_colleagues_task(world: World) -> None:
    # A third 城东区 inspector is not drawn (the draw picks two of three with seed 7).
    async with world.pool.connection() as conn:
        await users.add_user(
            conn=conn,
            new=UserCreate(
                username="insp-d",
                name="周敏",
                role=Role.INSPECTOR,
                password="correct-horse",
                district="城东区",
            ),
        )
    task = await world.open_task(await world.fire())
    inspectors = (await world.get("chief", f"/api/v1/tasks/{task}")).json()["inspectors"]
    outsider = next(u for u in ("insp-a", "insp-b", "insp-d") if u not in inspectors)

    listed = (await world.get(outsider, "/api/v1/tasks")).json()
    assert ids(listed) == [task]  # the district's task is visible ...
    assert (await world.get(outsider, "/api/v1/tasks", mine="true")).json() == []  # ... not its own
    refused = await world.post(outsider, f"/api/v1/tasks/{task}/start")
    assert refused.status_code == 403
    assert refused.json()["detail"] == f"task {task} is not assigned to {outsider}"
    history = (await world.get("chief", f"/api/v1/tasks/{task}")).json()["history"]
    assert [h["action"] for h in history] == ["opened"]
