"""Waste store environment: cold storage, door and UV lamp."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.alerts.detectors.factories import (
    at,
    clears,
    constant,
    device,
    event,
    firing,
    site,
    state,
    stream,
)
from weijian.alerts.detectors.store import (
    ColdStorageDetector,
    DoorOpenDetector,
    UvDetector,
    on_time,
)
from weijian.alerts.models import SiteData
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Reading

COLD = ColdStorageDetector()
DOOR = DoorOpenDetector()
UV = UvDetector()
REQUIRED = {"waste.cold_storage_required": True}


def env(
    metric: str, values: list[float], start: datetime | None = None, step_s: float = 60
) -> SiteData:
    readings = stream("d1", start or at(), {metric: values}, step_s=step_s)
    return site(device(DeviceKind.WASTE_STORE_ENV, readings=readings), overrides=REQUIRED)


def test_cold_storage_only_where_required() -> None:
    s = env("temp_c", constant(25.0, 60))
    plain = site(*s.devices.values())
    assert COLD(plain, at(hours=2)) == []
    assert firing(COLD(s, at(hours=2)))


def test_warm_spell_of_29_min_does_not_fire_30_does() -> None:
    assert firing(COLD(env("temp_c", [18.0, *constant(20.0, 30), 18.0]), at(hours=2))) == []
    (finding,) = firing(COLD(env("temp_c", [18.0, *constant(20.0, 31), 18.0]), at(hours=2)))
    assert finding.value == 20.0  # at the limit is already too warm: storage must stay below
    assert finding.limit == 20.0
    assert finding.evidence_metric == "temp_c"
    assert finding.episode == f"temp_c@{at(minutes=1).isoformat()}"


def test_a_single_warm_sample_never_fires() -> None:
    assert (
        firing(COLD(env("temp_c", [*constant(18.0, 30), 35.0, *constant(18.0, 30)]), at(hours=2)))
        == []
    )


def test_cold_storage_clears_after_the_same_time_below() -> None:
    warm = constant(24.0, 40)
    assert clears(COLD(env("temp_c", warm + constant(18.0, 30)), at(hours=3))) == []
    findings = COLD(env("temp_c", warm + constant(18.0, 31)), at(hours=3))
    assert state(findings) == "clear"


def test_door_open_30_min_is_allowed_and_a_second_more_is_not() -> None:
    exactly = [Reading(at(seconds=s), "d1", "door_open", 1.0) for s in range(0, 1801, 60)]
    over = [*exactly, Reading(at(seconds=1801), "d1", "door_open", 1.0)]
    for readings, fires in ((exactly, False), (over, True)):
        s = site(device(DeviceKind.WASTE_STORE_ENV, readings=readings))
        assert bool(firing(DOOR(s, at(hours=1)))) == fires


def test_door_still_open_is_open_and_closing_clears() -> None:
    s = env("door_open", constant(1.0, 40))
    (open_,) = DOOR(s, at(hours=1))
    assert open_.ended_at is None
    assert open_.value == 39.0
    assert open_.unit == "min"
    assert "仍未关闭" in open_.summary
    closed = env("door_open", [*constant(1.0, 40), 0.0])
    findings = DOOR(closed, at(hours=1))
    assert [f.state for f in findings] == ["firing", "clear"]
    assert findings[1].episode == findings[0].episode == f"door_open@{at().isoformat()}"
    assert state(findings) == "clear"


def test_door_continuity_is_not_proven_across_a_data_gap() -> None:
    before = stream("d1", at(), {"door_open": constant(1.0, 20)}, step_s=60)
    after = stream("d1", at(minutes=30), {"door_open": constant(1.0, 20)}, step_s=60)
    s = site(device(DeviceKind.WASTE_STORE_ENV, readings=before + after))
    assert firing(DOOR(s, at(hours=1))) == []


def test_on_time_holds_each_sample_until_the_next_but_not_across_gaps() -> None:
    readings = [Reading(at(minutes=m), "d1", "uv_on", v) for m, v in ((0, 1), (10, 0), (20, 1))]
    assert on_time(readings, at(), at(hours=1), timedelta(minutes=5)) == timedelta(minutes=10)
    assert on_time(readings, at(minutes=5), at(minutes=8), timedelta(hours=1)) == timedelta(
        minutes=3
    )


def local(day: int, hour: int, minute: int = 0) -> datetime:
    """Shanghai wall-clock time on 2026-11-`day`."""
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC) - timedelta(hours=8)


def uv_day(minutes_on: int, start: datetime | None = None) -> SiteData:
    """A full local day of minute samples with the lamp on for `minutes_on` minutes at 10:00."""
    first = local(23, 0)
    lamp_on = local(23, 10) if start is None else start
    values = [
        1.0
        if lamp_on <= first + timedelta(minutes=i) < lamp_on + timedelta(minutes=minutes_on)
        else 0.0
        for i in range(24 * 60)
    ]
    return env("uv_on", values, first)


def test_uv_29_minutes_in_a_day_fails_and_30_passes() -> None:
    now = local(24, 6)
    (finding,) = firing(UV(uv_day(29), now))
    assert finding.episode == "2026-11-23"
    assert finding.value == 29.0
    assert finding.limit == 30.0
    assert finding.severity == "warning"
    ok = UV(uv_day(30), now)
    assert firing(ok) == []
    assert [f.episode for f in clears(ok)] == ["2026-11-23"]


def test_uv_day_is_only_judged_once_it_is_over() -> None:
    assert UV(uv_day(0), local(23, 23, 59)) == []


def test_uv_days_are_local_calendar_days() -> None:
    # Two local days of data; the lamp on 23:45–00:15: 15 minutes on each day.
    first = local(23, 0)
    lamp = (local(23, 23, 45), local(24, 0, 15))
    values = [
        1.0 if lamp[0] <= first + timedelta(minutes=i) < lamp[1] else 0.0 for i in range(2 * 1440)
    ]
    findings = UV(env("uv_on", values, first), local(25, 1))
    assert {f.episode: f.value for f in findings} == {"2026-11-23": 15.0, "2026-11-24": 15.0}


def test_uv_after_a_hand_over() -> None:
    handover = local(23, 14)
    scale = device(
        DeviceKind.WASTE_SCALE,
        "scale",
        events=[
            event("scale", handover, "bag_out", bag_ids=["B1"], weight_kg=2.0, manifest_no="M7")
        ],
    )
    lamp = stream("d1", local(23, 12), {"uv_on": constant(0.0, 8 * 60)}, step_s=60)
    dark = site(device(DeviceKind.WASTE_STORE_ENV, readings=lamp), scale)
    assert UV(dark, local(23, 17, 59)) == []  # the 4 h window is not over yet
    (finding,) = firing(UV(dark, local(23, 18)))
    assert finding.episode == "handover:M7"
    assert finding.device_id == "d1"
    lit = [Reading(r.ts, r.device_id, r.metric, 1.0 if r.ts < local(23, 15) else 0.0) for r in lamp]
    bright = site(device(DeviceKind.WASTE_STORE_ENV, readings=lit), scale)
    assert [f.state for f in UV(bright, local(23, 18))] == ["clear"]


def test_a_door_open_longer_than_the_lookback_keeps_its_episode_across_runs() -> None:
    # Open for three days; each run sees only its two-day window, whose start moves.
    s = env("door_open", constant(1.0, 3 * 24 * 60))
    first = DOOR(s, at(hours=71))
    later = DOOR(s, at(hours=71, minutes=10))
    assert (
        [f.episode for f in first] == [f.episode for f in later] == ["door_open@before:2026-11-24"]
    )
    assert first[0].ended_at is None


def test_a_day_the_data_do_not_cover_gets_no_uv_verdict() -> None:
    afternoon = env("uv_on", constant(0.0, 10 * 60), local(23, 12))  # from noon only
    assert UV(afternoon, local(24, 6)) == []
