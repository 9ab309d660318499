"""Alerts over HTTP: filters, detail with history, acknowledge and resolve, the rule catalogue."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.api.conftest import NOW, World
from weijian.alerts.models import Severity
from weijian.alerts.rules import RULES

pytestmark = pytest.mark.anyio


async def test_filters_on_status_site_rule_and_limit(world: World) -> None:
    first = await world.fire(site_id="site-a", device_id="stm-a1", at=NOW - timedelta(minutes=30))
    second = await world.fire(
        site_id="site-a",
        device_id="stm-a2",
        rule="data.flatline",
        severity=Severity.WARNING,
        at=NOW - timedelta(minutes=20),
    )
    third = await world.fire(site_id="site-c", device_id="stm-c1", at=NOW - timedelta(minutes=10))
    await world.post("chief", f"/api/v1/alerts/{second}/ack")

    async def listed(**params: object) -> list[int]:
        response = await world.get("chief", "/api/v1/alerts", **params)
        assert response.status_code == 200, response.text
        return [a["id"] for a in response.json()]

    assert await listed() == [third, second, first]  # newest first
    assert await listed(status="firing") == [third, first]
    assert await listed(status="acknowledged") == [second]
    assert await listed(site_id="site-a") == [second, first]
    assert await listed(rule="data.flatline") == [second]
    assert await listed(rule="disinfection.temperature_low", site_id="site-c") == [third]
    assert await listed(limit=1) == [third]

    bad_status = await world.get("chief", "/api/v1/alerts", status="open")
    assert bad_status.status_code == 422
    bad_rule = await world.get("chief", "/api/v1/alerts", rule="no.such_rule")
    assert bad_rule.status_code == 400
    assert bad_rule.json()["detail"].startswith("unknown rule 'no.such_rule'; one of:")


async def test_alert_fields_are_named_as_in_the_database(world: World) -> None:
    alert_id = await world.fire()
    alert = (await world.get("chief", f"/api/v1/alerts/{alert_id}")).json()
    assert alert["rule"] == "disinfection.temperature_low"
    assert alert["severity"] == "major"
    assert alert["status"] == "firing"
    assert (alert["site_id"], alert["device_id"]) == ("site-a", "stm-a1")
    assert alert["limit_value"] == 100.0
    assert alert["evidence_metric"] == "temp_c"
    assert alert["started_at"].startswith("2026-11-23T01:50:00")
    assert alert["source"] == RULES["disinfection.temperature_low"].source
    assert [h["action"] for h in alert["history"]] == ["fired"]


async def test_acknowledge_then_resolve_with_history(world: World) -> None:
    alert_id = await world.fire()
    acked = await world.post("insp-a", f"/api/v1/alerts/{alert_id}/ack", {"note": "已电话联系"})
    assert acked.status_code == 200, acked.text
    assert acked.json()["status"] == "acknowledged"
    assert acked.json()["acknowledged_by"] == "insp-a"

    again = await world.post("chief", f"/api/v1/alerts/{alert_id}/ack")
    assert again.status_code == 409
    assert "only a firing alert can be acknowledged" in again.json()["detail"]

    no_note = await world.post("chief", f"/api/v1/alerts/{alert_id}/resolve", {})
    assert no_note.status_code == 422
    resolved = await world.post(
        "chief", f"/api/v1/alerts/{alert_id}/resolve", {"note": "现场复核合格"}
    )
    assert resolved.status_code == 200
    body = resolved.json()
    assert body["status"] == "resolved"
    steps = [
        (h["action"], h["from_status"], h["to_status"], h["actor"], h["note"])
        for h in body["history"]
    ]
    assert steps == [
        ("fired", None, "firing", "system", "消毒温度 92.0 °C，低于 100 °C"),
        ("acknowledged", "firing", "acknowledged", "insp-a", "已电话联系"),
        ("resolved", "acknowledged", "resolved", "chief", "现场复核合格"),
    ]
    twice = await world.post("chief", f"/api/v1/alerts/{alert_id}/resolve", {"note": "再次"})
    assert twice.status_code == 409
    assert twice.json()["detail"] == f"alert {alert_id} is already resolved"


async def test_unknown_alert_is_404(world: World) -> None:
    assert (await world.get("chief", "/api/v1/alerts/999")).status_code == 404
    missing = await world.post("chief", "/api/v1/alerts/999/ack")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no alert 999"
    assert (await world.get("chief", "/api/v1/alerts/not-a-number")).status_code == 422


async def test_rule_catalogue_has_names_and_sources(world: World) -> None:
    rules = {r["id"]: r for r in (await world.get("op-a", "/api/v1/rules")).json()}
    assert set(rules) == set(RULES)
    assert rules["waste.storage_overdue"]["name_zh"] == "医疗废物暂存超时"
    assert rules["waste.storage_overdue"]["name_en"] == "medical waste stored too long"
    assert rules["waste.storage_overdue"]["level"] == "reg"
    assert "医疗废物管理条例" in rules["waste.storage_overdue"]["source"]


async def test_overview_counts_and_site_colours(world: World) -> None:
    await world.fire(site_id="site-a", device_id="stm-a1", severity=Severity.CRITICAL)
    await world.fire(
        site_id="site-a", device_id="stm-a2", rule="data.flatline", severity=Severity.WARNING
    )
    await world.fire(
        site_id="site-b",
        device_id="wse-b1",
        rule="waste.door_open_long",
        severity=Severity.WARNING,
        metric="door_open",
    )
    resolved = await world.fire(site_id="site-c", device_id="stm-c1")
    await world.post("chief", f"/api/v1/alerts/{resolved}/resolve", {"note": "误报"})
    overview = (
        await world.get("chief", "/api/v1/overview", since="2026-11-23T00:00:00+08:00")
    ).json()
    assert overview["devices_registered"] == 4
    assert overview["devices_online"] == 2
    assert overview["online_rate"] == 0.5
    assert overview["alerts_today"] == 4
    assert overview["alerts_today_by_severity"] == {"critical": 1, "major": 1, "warning": 2}
    states = {
        s["site_id"]: (s["state"], s["worst_severity"], s["firing"]) for s in overview["sites"]
    }
    assert states == {"site-a": ("alarm", "critical", 2), "site-b": ("warning", "warning", 1)}
