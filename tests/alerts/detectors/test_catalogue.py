"""The whole catalogue: one detector per rule, complete and deterministic findings."""

from __future__ import annotations

import random
import re
from datetime import timedelta

from tests.alerts.detectors.factories import at, device, event, site, stream
from weijian.alerts.detectors import RuleGroup, catalogue
from weijian.alerts.detectors.dish import DishExposureDetector
from weijian.alerts.models import DeviceData, Finding, SiteData
from weijian.alerts.rules import RULES
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Reading

NOW = at(hours=50)
CHINESE = re.compile(r"[\u4e00-\u9fff]")


def test_one_detector_per_rule_and_every_rule_covered() -> None:
    ids = [d.rule.id for d in catalogue()]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(RULES)
    assert all(d.lookback > timedelta(0) and d.device_kinds for d in catalogue())


def test_a_rule_group_refuses_parts_of_different_rules() -> None:
    import pytest

    with pytest.raises(ValueError, match="one rule"):
        RuleGroup(DishExposureDetector(), catalogue()[0])


def troubled_plant() -> SiteData:
    """A plant whose cabinet fails, whose line packs regardless and whose data is poor."""
    temps = stream("cab", at(hours=49), {"temp_c": [90.0] * 70}, seq0=1000)
    cab = device(
        DeviceKind.STEAM_CABINET,
        "cab",
        readings=temps,
        events=[
            event("cab", at(hours=49), "batch_start", batch_id="B1"),
            event("cab", temps[-1].ts, "batch_end", batch_id="B1"),
        ],
        last_seen=temps[-1].received_at,
    )
    packed = stream(
        "meter", at(hours=47), {"packed_total": [float(i) for i in range(100)]}, step_s=60
    )
    meter = device(DeviceKind.LINE_METER, "meter", readings=packed, last_seen=at(hours=40))
    dish_values = {
        "conveyor_speed_m_min": [3.0] * 30,
        "rinse_temp_c": [70.0] * 30,
        "running": [1.0] * 30,
        "wash_temp_c": [150.0] * 30,
    }
    dish = device(
        DeviceKind.DISH_MACHINE, "dish", readings=stream("dish", at(hours=49), dish_values)
    )
    return site(cab, meter, dish)


def troubled_store() -> SiteData:
    n = 600
    env_values = {
        "temp_c": [26.0] * n,
        "humidity_pct": [60.0] * n,
        "door_open": [1.0] * n,
        "uv_on": [0.0] * n,
    }
    env = device(
        DeviceKind.WASTE_STORE_ENV,
        "env",
        readings=stream("env", NOW - timedelta(minutes=n), env_values, step_s=60, seq0=0),
    )
    scale = device(
        DeviceKind.WASTE_SCALE,
        "scale",
        events=[
            event("scale", at(), "bag_in", bag_id="A", weight_kg=3.0, category="infectious"),
            event(
                "scale", at(minutes=5), "bag_in", bag_id="B", weight_kg=2.0, category="infectious"
            ),
            # A sharps bag the (infectious-only) hand-over had no reason to take: overdue.
            event("scale", at(minutes=9), "bag_in", bag_id="C", weight_kg=1.0, category="sharps"),
            event("scale", at(hours=1), "bag_out", bag_ids=["B"], weight_kg=2.5, manifest_no="M1"),
        ],
    )
    return site(env, scale, overrides={"waste.cold_storage_required": True})


def run(s: SiteData) -> list[Finding]:
    return [f for d in catalogue() for f in d(s, NOW)]


def test_findings_are_complete() -> None:
    findings = run(troubled_plant()) + run(troubled_store())
    fired = {f.rule for f in findings if f.state == "firing"}
    assert fired >= {
        "disinfection.temperature_low",
        "disinfection.exposure_short",
        "disinfection.released_undisinfected",
        "device.offline",
        "data.out_of_range",
        "waste.storage_overdue",
        "waste.weight_mismatch",
        "waste.bag_missing",
        "waste.cold_storage_temp_high",
        "waste.door_open_long",
        "data.flatline",
    }
    for f in findings:
        assert f.rule in RULES
        assert f.episode, f
        assert CHINESE.search(f.summary), f
        if f.state == "firing":
            assert None not in (f.value, f.limit, f.unit), f
            assert f.evidence_from is not None, f
            assert f.evidence_to is not None, f
            assert f.evidence_from <= f.evidence_to, f


def test_findings_are_deterministic_and_independent_of_input_order() -> None:
    s = troubled_store()
    shuffled: dict[str, DeviceData] = {}
    rng = random.Random(7)
    for device_id, data in s.devices.items():
        readings: list[Reading] = list(data.readings)
        events = list(data.events)
        rng.shuffle(readings)
        rng.shuffle(events)
        shuffled[device_id] = DeviceData(device_id, data.kind, tuple(readings), tuple(events))
    other = SiteData(s.site_id, s.site_kind, shuffled, s.profile)
    assert run(s) == run(s)
    assert sorted(map(repr, run(s))) == sorted(map(repr, run(other)))


def test_detectors_ignore_data_after_now() -> None:
    s = troubled_plant()
    before = [f for f in run(s) if f.rule != "device.offline"]
    future = stream("cab", NOW + timedelta(minutes=5), {"temp_c": [500.0] * 3})
    cab = s.devices["cab"]
    later = DeviceData("cab", cab.kind, (*cab.readings, *future), cab.events, cab.last_seen)
    s2 = SiteData(s.site_id, s.site_kind, {**s.devices, "cab": later}, s.profile)
    assert [f for f in run(s2) if f.rule != "device.offline"] == before
