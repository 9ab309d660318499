"""The matcher: true and false positives and negatives, latency, false alerts per device-day."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from rich.console import Console

from tests.simulator.helpers import plant, scenario
from weijian.simulator.labels import Label
from weijian.simulator.matcher import (
    AlertRecord,
    alerts_from_platform,
    device_days,
    match,
    render_table,
    to_dict,
)
from weijian.simulator.provision import DeviceCredentials, StaticProvisioner

T0 = datetime(2026, 11, 23, tzinfo=UTC)
M = timedelta(minutes=1)


def _label(rule: str = "r.a", at: int = 0, device: str | None = "d1", site: str = "s1") -> Label:
    when = T0 + at * M
    return Label(rule, site, device, when, when + 15 * M, "sc", f"{at}-f")


def _alert(
    rule: str = "r.a", at: float = 1, device: str | None = "d1", site: str = "s1"
) -> AlertRecord:
    return AlertRecord(rule, site, device, T0 + at * M)


def test_true_positive_with_latency() -> None:
    ev = match([_label(at=0)], [_alert(at=3)])
    score = ev.score()
    assert (score.tp, score.fp, score.fn) == (1, 0, 0)
    assert ev.matches[0].latency_s == 180
    assert score.precision == score.recall == score.f1 == 1.0


def test_window_edges() -> None:
    assert match([_label()], [_alert(at=-1.9)]).score().tp == 1  # within the early slack
    assert match([_label()], [_alert(at=-3)]).score().tp == 0
    assert match([_label()], [_alert(at=15)]).score().tp == 1
    late = match([_label()], [_alert(at=16)])
    assert (late.score().tp, late.score().fp, late.score().fn) == (0, 1, 1)


def test_explicit_window_start() -> None:
    label = Label("r.a", "s1", "d1", T0, T0 + 60 * M, "sc", "f", window_start=T0 - 30 * M)
    assert match([label], [_alert(at=-20)]).score().tp == 1


def test_wrong_rule_site_or_device_does_not_match() -> None:
    for alert in (_alert(rule="r.b"), _alert(site="s2"), _alert(device="d2")):
        score = match([_label()], [alert]).score()
        assert (score.tp, score.fp, score.fn) == (0, 1, 1)


def test_site_level_alert_or_label_matches_any_device() -> None:
    assert match([_label(device=None)], [_alert(device="d9")]).score().tp == 1
    assert match([_label()], [_alert(device=None)]).score().tp == 1


def test_one_alert_matches_one_label() -> None:
    ev = match([_label(at=0), _label(at=5)], [_alert(at=6)])
    assert (ev.score().tp, ev.score().fn) == (1, 1)
    ev = match([_label(at=0), _label(at=5)], [_alert(at=1), _alert(at=7)])
    assert ev.score().tp == 2
    duplicate = match([_label()], [_alert(at=1), _alert(at=2)])
    assert (duplicate.score().tp, duplicate.score().fp) == (1, 1)


def test_scenario_names_keep_runs_apart() -> None:
    other = AlertRecord("r.a", "s1", "d1", T0 + M, scenario="elsewhere")
    assert match([_label()], [other]).score().tp == 0


def test_per_rule_scores_and_percentiles() -> None:
    labels = [_label(at=i * 30) for i in range(10)] + [_label("r.b", 0)]
    alerts = [_alert(at=i * 30 + i) for i in range(10)] + [_alert("r.c", 5)]
    ev = match(labels, alerts)
    a = ev.score("r.a")
    assert (a.tp, a.fp, a.fn) == (10, 0, 0)
    assert a.latency_p50_s == 270
    assert 480 <= (a.latency_p95_s or 0) <= 540
    assert ev.score("r.b").recall == 0.0
    assert ev.score("r.b").precision is None
    assert ev.score("r.c").precision == 0.0
    overall = ev.score()
    assert (overall.tp, overall.fp, overall.fn) == (10, 1, 1)
    assert ev.rules() == ["r.a", "r.b", "r.c"]


def test_false_alerts_per_thousand_device_days() -> None:
    clean = match([], [_alert(), _alert(at=60)], clean_device_days=400)
    assert clean.false_alerts_per_1000_device_days == 5.0
    faulty = match([_label()], [_alert(), _alert(rule="r.x")])
    combined = clean + faulty
    assert combined.false_alerts_per_1000_device_days == 5.0
    assert combined.score().fp == 3
    assert faulty.false_alerts_per_1000_device_days is None


def test_ignored_rules() -> None:
    ev = match(
        [_label()], [_alert(), _alert(rule="behaviour.anomaly")], ignore_rules={"behaviour.anomaly"}
    )
    assert ev.score().fp == 0


def test_device_days() -> None:
    sc = scenario([plant()], duration="2d")
    assert device_days(sc) == 10.0


def test_alerts_from_platform_translate_ids() -> None:
    creds = {
        "s1/d1": DeviceCredentials(
            "dev-77", "dev-77", "pw", "mqtt://x:1884", "weijian/v1", "site-9"
        )
    }
    rows = [
        {
            "id": 1,
            "rule": "r.a",
            "site_id": "site-9",
            "device_id": "dev-77",
            "first_detected_at": (T0 + M).isoformat(),
        },
        {"id": 2, "rule": "r.b", "site_id": "site-9", "device_id": None, "started_at": T0},
    ]
    alerts = alerts_from_platform(rows, creds, scenario="sc")
    assert alerts[0] == AlertRecord("r.a", "s1", "d1", T0 + M, "sc", "1")
    assert (alerts[1].site, alerts[1].device) == ("s1", None)
    sc = scenario([plant()])
    static = StaticProvisioner(prefix="x").provision(sc)
    assert static["p/steam-1"].device_id == "x-p-steam-1"
    assert static["p/steam-1"].topic("telemetry") == "weijian/v1/x-p-steam-1/telemetry"


def test_table_and_json() -> None:
    ev = match([_label(), _label("r.b", 10)], [_alert(at=2)], clean_device_days=0) + match(
        [], [_alert(at=100)], clean_device_days=50
    )
    console = Console(record=True, width=140)
    console.print(render_table(ev))
    text = console.export_text()
    assert "r.a" in text
    assert "overall" in text
    assert "1,000 device-days" in text
    data = to_dict(ev)
    json.dumps(data)
    assert data["overall"]["tp"] == 1
    assert data["overall"]["fn"] == 1
    assert data["false_alerts_per_1000_device_days"] == 20.0
    assert data["false_negatives"][0]["rule"] == "r.b"


def test_a_storage_prewarning_is_reported_apart_and_not_scored() -> None:
    overdue = "waste.storage_overdue"
    window = Label(overdue, "s1", "d1", T0 + 12 * 60 * M, T0 + 13 * 60 * M, "sc", "f", T0)
    reached = AlertRecord(overdue, "s1", "d1", T0 + 5 * M, severity="major")
    # A compliant day elsewhere: the 36 h reminder that never became a violation.
    reminder = AlertRecord(overdue, "s2", "d1", T0 + 5 * M, severity="warning")
    # A warning-only alert cannot stand for a 48 h violation either.
    short = AlertRecord(overdue, "s3", "d1", T0 + 5 * M, severity="warning")
    label_s3 = Label(overdue, "s3", "d1", T0 + 12 * 60 * M, T0 + 13 * 60 * M, "sc", "g", T0)
    ev = match([window, label_s3], [reached, reminder, short])
    score = ev.score(overdue)
    assert (score.tp, score.fp, score.fn) == (1, 0, 1)
    assert ev.prewarnings == [reminder, short]
    # Other rules and alerts of unknown severity are scored as before.
    assert match([], [AlertRecord(overdue, "s1", "d1", T0)]).score().fp == 1
    assert (
        match([], [AlertRecord("device.offline", "s1", "d1", T0, severity="warning")]).score().fp
        == 1
    )
    data = to_dict(ev + match([], [reminder]))
    assert [a["severity"] for a in data["prewarnings"]] == ["warning", "warning", "warning"]
    console = Console(record=True, width=140)
    console.print(render_table(ev))
    assert "pre-warnings (not scored): 2" in console.export_text()


def test_alerts_from_platform_carry_the_highest_severity() -> None:
    creds = {
        "s1/d1": DeviceCredentials("dev-1", "dev-1", "pw", "mqtt://x:1884", "weijian/v1", "site-1")
    }
    row = {
        "id": 3,
        "rule": "waste.storage_overdue",
        "site_id": "site-1",
        "device_id": "dev-1",
        "first_detected_at": T0,
        "severity": "warning",
    }
    (alert,) = alerts_from_platform([row], creds, scenario="sc")
    assert (alert.severity, alert.prewarning) == ("warning", True)
