"""data.flatline and data.out_of_range."""

from __future__ import annotations

from tests.alerts.detectors.factories import (
    at,
    constant,
    device,
    event,
    firing,
    site,
    state,
    stream,
)
from weijian.alerts.detectors.integrity import FlatlineDetector, OutOfRangeDetector
from weijian.alerts.models import SiteData
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Reading

FLAT = FlatlineDetector()
RANGE = OutOfRangeDetector()


def env(metric: str, values: list[float], step_s: float = 60, seq0: int | None = None) -> SiteData:
    readings = stream("d1", at(), {metric: values}, step_s=step_s, seq0=seq0)
    return site(device(DeviceKind.WASTE_STORE_ENV, readings=readings))


def wavy(count: int) -> list[float]:
    return [20.0 + (i % 7) * 0.1 for i in range(count)]


def test_store_temperature_flat_for_90_min_fires_89_does_not() -> None:
    assert firing(FLAT(env("temp_c", wavy(5) + constant(21.3, 90) + wavy(5)), at(hours=2))) == []
    (finding,) = firing(FLAT(env("temp_c", wavy(5) + constant(21.3, 91) + wavy(5)), at(hours=2)))
    assert finding.value == 21.3
    assert finding.limit == 90 * 60
    assert finding.evidence_metric == "temp_c"
    assert finding.severity == "major"
    assert finding.episode == f"temp_c@{at(minutes=5).isoformat()}"


def test_flatline_clears_once_the_value_changes() -> None:
    still = FLAT(env("temp_c", wavy(3) + constant(21.3, 120)), at(hours=3))
    assert state(still) == "firing"
    moved = FLAT(env("temp_c", wavy(3) + constant(21.3, 120) + [21.4, 21.5]), at(hours=3))
    assert state(moved) == "clear"


def test_flags_counters_and_range_bounds_never_flatline() -> None:
    assert FLAT(env("door_open", constant(0.0, 600)), at(hours=12)) == []
    assert firing(FLAT(env("humidity_pct", constant(100.0, 200)), at(hours=6))) == []
    meter = stream("d1", at(), {"packed_total": constant(500.0, 300)}, step_s=30)
    assert FLAT(site(device(DeviceKind.LINE_METER, readings=meter)), at(hours=3)) == []


def test_line_power_flat_only_counts_while_packing() -> None:
    n = 150
    idle = {"power_kw": constant(3.0, n), "packed_total": constant(10.0, n)}
    idle_meter = site(device(DeviceKind.LINE_METER, readings=stream("d1", at(), idle, step_s=30)))
    assert firing(FLAT(idle_meter, at(hours=2))) == []
    busy = {"power_kw": constant(3.0, n), "packed_total": [10.0 + i for i in range(n)]}
    busy_meter = site(device(DeviceKind.LINE_METER, readings=stream("d1", at(), busy, step_s=30)))
    assert len(firing(FLAT(busy_meter, at(hours=2)))) == 1


def test_dish_temperature_flat_only_while_running() -> None:
    n = 200
    values = {"rinse_temp_c": constant(86.0, n), "running": constant(0.0, n)}
    stopped = site(device(DeviceKind.DISH_MACHINE, readings=stream("d1", at(), values)))
    assert firing(FLAT(stopped, at(hours=1))) == []
    values["running"] = constant(1.0, n)
    running = site(device(DeviceKind.DISH_MACHINE, readings=stream("d1", at(), values)))
    assert [f.evidence_metric for f in firing(FLAT(running, at(hours=1)))] == ["rinse_temp_c"]


def cabinet_batch(temps: list[float]) -> SiteData:
    readings = stream("d1", at(), {"temp_c": temps})
    events = [
        event("d1", at(), "batch_start", batch_id="B1"),
        event("d1", readings[-1].ts, "batch_end", batch_id="B1"),
    ]
    return site(device(DeviceKind.STEAM_CABINET, readings=readings, events=events))


def test_a_cabinet_batch_without_any_change_is_a_flat_line() -> None:
    (finding,) = FLAT(cabinet_batch(constant(101.0, 70)), at(hours=1))
    assert (finding.state, finding.episode) == ("firing", "temp_c@B1")
    heating = cabinet_batch([60.0, 80.0, *constant(101.0, 68)])
    assert [f.state for f in FLAT(heating, at(hours=1))] == ["clear"]


def test_value_outside_physical_range() -> None:
    s = env("temp_c", [20.0, 20.0, -60.0, -60.0, -60.0, 20.0])
    (finding,) = firing(RANGE(s, at(hours=1)))
    assert finding.value == -60.0
    assert finding.evidence_metric == "temp_c"
    assert finding.episode == f"temp_c@{at(minutes=2).isoformat()}"
    assert finding.ended_at == at(minutes=4)
    assert "[-40, 70]" in finding.summary


def test_out_of_range_clears_after_half_an_hour_in_range() -> None:
    spike = [20.0, 99.0]
    assert state(RANGE(env("temp_c", spike + constant(20.0, 30)), at(hours=1))) == "firing"
    assert state(RANGE(env("temp_c", spike + constant(20.0, 31)), at(hours=1))) == "clear"


def test_impossible_rate_of_change() -> None:
    # Waste-store air may change at most 1 °C/s: 20 → 35 °C in 10 s is not physics.
    s = env("temp_c", [20.0, 35.0, 35.0], step_s=10, seq0=1)
    (finding,) = firing(RANGE(s, at(hours=1)))
    assert finding.value == 1.5
    assert finding.limit == 1.0
    assert finding.unit == "°C/s"
    assert finding.episode == f"temp_c:rate@{at(seconds=10).isoformat()}"


def test_rate_is_not_judged_across_a_clock_jump_or_reboot() -> None:
    # Neighbours in device time whose seqs are far apart came from different times.
    readings = [
        Reading(at(seconds=0), "d1", "temp_c", 20.0, 500),
        Reading(at(seconds=10), "d1", "temp_c", 35.0, 120),
        Reading(at(seconds=20), "d1", "temp_c", 20.0, 0),
    ]
    s = site(device(DeviceKind.WASTE_STORE_ENV, readings=readings))
    assert firing(RANGE(s, at(hours=1))) == []


def test_a_sensor_stuck_for_days_keeps_its_episode_across_runs() -> None:
    s = env("temp_c", constant(21.3, 2 * 24 * 60))
    runs = [FLAT(s, at(hours=30, minutes=m)) for m in (0, 10, 50)]
    assert {f.episode for run in runs for f in run} == {"temp_c@before:2026-11-24"}
