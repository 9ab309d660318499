"""Each fault violates its own rule, and only it, and carries a label with the right window."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.simulator.helpers import hospital, items, plant, run, scenario, site_data
from tests.simulator.oracle import violations
from weijian.alerts.detectors import catalogue
from weijian.simulator.faults import FAULTS
from weijian.simulator.labels import TOLERANCE
from weijian.simulator.plan import plan_scenario
from weijian.simulator.scenario import ScenarioError

_STEAM = {"key": "steam-1", "kind": "steam_cabinet"}
_IR = {"key": "ir-1", "kind": "infrared_cabinet"}
_DISH = {"key": "dish-1", "kind": "dish_machine"}
_TANK = {"key": "chlorine-1", "kind": "chlorine_tank"}
_LINE = {"key": "line-1", "kind": "line_meter"}
_COLD = {"waste.cold_storage_required": True}


@dataclass
class Case:
    fault: str
    device: str
    at: str
    site: dict[str, Any]
    rule: str | None
    # detectable_at must fall within [at + low, at + high]
    low: timedelta = timedelta(0)
    high: timedelta = timedelta(hours=1)
    params: dict[str, Any] = field(default_factory=dict)
    duration: str = "1d"

    @property
    def id(self) -> str:
        return f"{self.fault}-{self.device}"


def _plant(*devices: dict[str, str]) -> dict[str, Any]:
    return plant(devices=list(devices))


_M = timedelta(minutes=1)
CASES = [
    Case("under_temp", "steam-1", "6h", _plant(_STEAM), "disinfection.hold_time_short"),
    Case("under_temp", "ir-1", "14h", _plant(_IR), "disinfection.hold_time_short"),
    Case("no_heat", "steam-1", "6h", _plant(_STEAM), "disinfection.temperature_low"),
    Case(
        "no_heat", "ir-1", "5h", _plant(_IR), "disinfection.temperature_low", params={"batches": 2}
    ),
    Case("short_hold", "steam-1", "13h", _plant(_STEAM), "disinfection.hold_time_short"),
    Case(
        "conveyor_fast", "dish-1", "6h", _plant(_DISH), "disinfection.exposure_short", high=_M * 0.2
    ),
    Case("rinse_cold", "dish-1", "14h", _plant(_DISH), "disinfection.temperature_low", high=_M * 5),
    Case(
        "chlorine_low", "chlorine-1", "6h", _plant(_TANK), "disinfection.chlorine_low", high=_M * 30
    ),
    Case("short_immersion", "chlorine-1", "6h", _plant(_TANK), "disinfection.immersion_short"),
    Case(
        "packing_without_disinfection",
        "line-1",
        "20h",
        _plant(_STEAM, _DISH, _LINE),
        "disinfection.released_undisinfected",
        # the second sample after the start, plus the clock-skew margin for evidence
        low=_M * 5,
        high=_M * 7,
    ),
    Case(
        "overdue_waste",
        "scale-1",
        "11h",
        hospital(),
        "waste.storage_overdue",
        low=timedelta(hours=47),
        high=timedelta(hours=60),
        duration="4d",
    ),
    Case(
        "weight_mismatch",
        "scale-1",
        "5h",
        hospital(),
        "waste.weight_mismatch",
        high=timedelta(hours=6),
    ),
    Case(
        "missing_bag",
        "scale-1",
        "8h",
        hospital(),
        "waste.bag_missing",
        high=timedelta(hours=30),
        duration="2d",
    ),
    Case(
        "cold_room_warm",
        "env-1",
        "13h",
        hospital(profile=_COLD),
        "waste.cold_storage_temp_high",
        # the first warm sample plus the sustain time (waste.temp_sustain_min)
        low=_M * 30,
        high=_M * 90,
    ),
    Case(
        "no_uv",
        "env-1",
        "1d2h",
        hospital(),
        "waste.uv_not_done",
        high=timedelta(hours=22),
        duration="3d",
    ),
    # the first sample showing it open, then the first sample more than 30 min after that
    Case(
        "door_open", "env-1", "15h", hospital(), "waste.door_open_long", low=_M * 30, high=_M * 32
    ),
    Case(
        "door_open",
        "env-1",
        "15h0m30s",
        hospital(),
        "waste.door_open_long",
        low=_M * 31,
        high=_M * 32,
    ),
    Case("offline", "steam-1", "6h", _plant(_STEAM), "device.offline", low=_M * 9, high=_M * 10),
    Case(
        "offline",
        "env-1",
        "3h",
        hospital(),
        "device.offline",
        low=_M * 9,
        high=_M * 10,
        params={"backlog": False},
    ),
    Case(
        "offline",
        "scale-1",
        "9h",
        hospital(),
        "device.offline",
        low=_M * 15,
        high=_M * 15,
        params={"duration": "2h"},
    ),
    # the detector's window for the kind: store 90 min, chlorine 60 min
    Case("stuck_sensor", "env-1", "1h", hospital(), "data.flatline", low=_M * 90, high=_M * 91),
    Case(
        "stuck_sensor",
        "chlorine-1",
        "10h",
        _plant(_TANK),
        "data.flatline",
        low=_M * 60,
        high=_M * 61,
    ),
    Case("out_of_range", "steam-1", "1h", _plant(_STEAM), "data.out_of_range", high=_M * 0.2),
    Case("out_of_range", "env-1", "5h", hospital(), "data.out_of_range", high=_M),
    # provable with the first message received in the second skewed 5-min bucket (these runs
    # deliver each 60 s step at its end: the message sent from 1h04 is received at 1h05)
    Case("clock_skew", "line-1", "1h", _plant(_LINE), "data.clock_skew", low=_M * 4, high=_M * 11),
    # set back mid-bucket: that bucket's freshest message is from before the jump, so the
    # skewed buckets are the next two (1h05, 1h10): provable at the first message from 1h09
    Case(
        "clock_skew",
        "line-1",
        "1h2m",
        _plant(_LINE),
        "data.clock_skew",
        low=_M * 7,
        high=_M * 7.5,
        params={"offset": "-30m"},
    ),
    Case(
        "clock_skew",
        "scale-1",
        "10h",
        hospital(),
        "data.clock_skew",
        high=_M * 120,
        params={"offset": "-20m"},
    ),
    Case(
        "sequence_gap",
        "scale-1",
        "10h",
        hospital(),
        "data.sequence_gap",
        low=_M * 5,
        high=timedelta(hours=4, minutes=5),
    ),
    # the first message after the jump plus seq.gap_grace_s
    Case(
        "sequence_gap",
        "dish-1",
        "7h",
        _plant(_DISH),
        "data.sequence_gap",
        low=_M * 5,
        high=_M * 5.2,
    ),
    Case("replay", "chlorine-1", "2h", _plant(_TANK), "data.replay", high=_M * 0),
    Case(
        "replay",
        "env-1",
        "4h",
        hospital(),
        "data.replay",
        high=_M * 0,
        params={"variant": "new_values"},
    ),
    Case("reboot", "steam-1", "6h", _plant(_STEAM), None),
]


def test_every_fault_type_has_a_case() -> None:
    assert {c.fault for c in CASES} == set(FAULTS)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault_violates_its_rule_only(case: Case) -> None:
    site = case.site
    fault = {
        "type": case.fault,
        "at": case.at,
        "site": site["key"],
        "device": case.device,
        "params": case.params,
    }
    sc = scenario([site], [fault], duration=case.duration)
    sim, sink = run(sc)
    at = sc.fault_at(sc.faults[0])
    if case.rule is None:
        assert sim.labels == []
        assert violations(sc, sink) == set()
        return
    assert len(sim.labels) == 1
    label = sim.labels[0]
    assert (label.rule, label.site, label.device) == (case.rule, site["key"], case.device)
    assert label.scenario == "t"
    assert label.fault == "0-" + case.fault
    assert at + case.low <= label.detectable_at <= at + case.high
    assert label.window_end > label.detectable_at
    if label.window_start is None and case.fault != "no_uv":
        assert label.window_end - label.detectable_at == TOLERANCE[case.rule]
    assert violations(sc, sink) == {(case.rule, site["key"], case.device)}


def test_offline_publishes_last_will_then_backlog() -> None:
    sc = scenario(
        [_plant(_STEAM)],
        [
            {
                "type": "offline",
                "at": "6h",
                "site": "p",
                "device": "steam-1",
                "params": {"duration": "30m"},
            }
        ],
    )
    _, sink = run(sc)
    statuses = [m.payload for m in sink.of("p/steam-1", "status")]
    assert statuses == [b'{"online":true}', b'{"online":false}', b'{"online":true}']
    arrays = [m for m in sink.of("p/steam-1", "telemetry") if m.payload.startswith(b"[")]
    backlog = [i for m in arrays for i in orjson.loads(m.payload)]
    assert 170 <= len(backlog) <= 190  # 30 min of 10 s readings, in chunks
    assert all(m.at == arrays[0].at for m in arrays)
    seqs = [i["seq"] for i in items(sink, "p/steam-1", "telemetry")]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)


def test_power_off_restarts_seq_at_zero() -> None:
    sc = scenario(
        [_plant(_STEAM)],
        [
            {
                "type": "offline",
                "at": "2h",
                "site": "p",
                "device": "steam-1",
                "params": {"backlog": False},
            }
        ],
    )
    _, sink = run(sc)
    seqs = [i["seq"] for i in items(sink, "p/steam-1", "telemetry")]
    zero = seqs.index(0)
    assert zero > 0
    assert seqs[zero + 1] == 1
    # readings and events share the counter: together they leave no hole after the reboot
    back = sc.start + timedelta(hours=3)
    after = set(seqs[zero:]) | {
        e["seq"]
        for e in items(sink, "p/steam-1", "events")
        if datetime.fromisoformat(e["ts"]) > back
    }
    assert after == set(range(max(after) + 1))


def test_no_heat_labels_temperature_low_only_across_batches() -> None:
    fault = {
        "type": "no_heat",
        "at": "5h",
        "site": "p",
        "device": "steam-1",
        "params": {"batches": 3},
    }
    sim, _sink = run(scenario([_plant(_STEAM)], [fault]))
    assert [lb.rule for lb in sim.labels] == ["disinfection.temperature_low"]


def _plan_error(sites: list[dict[str, Any]], fault: dict[str, Any], duration: str = "1d") -> str:
    with pytest.raises(ScenarioError) as info:
        plan_scenario(scenario(sites, [fault], duration=duration))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_fault_with_nothing_to_act_on_is_refused() -> None:
    message = _plan_error(
        [_plant(_STEAM)], {"type": "under_temp", "at": "23h", "site": "p", "device": "steam-1"}
    )
    assert "faults[0] (under_temp)" in message
    assert "found nothing to act on" in message


def test_offline_shorter_than_threshold_is_refused() -> None:
    message = _plan_error(
        [_plant(_STEAM)],
        {
            "type": "offline",
            "at": "2h",
            "site": "p",
            "device": "steam-1",
            "params": {"duration": "5m"},
        },
    )
    assert "offline threshold" in message


def test_power_off_over_room_activity_is_refused() -> None:
    message = _plan_error(
        [hospital()],
        {
            "type": "offline",
            "at": "10h",
            "site": "h",
            "device": "env-1",
            "params": {"backlog": False, "duration": "3h"},
        },
    )
    assert "overlaps door or UV activity" in message


def test_metric_fault_on_event_only_device_is_refused() -> None:
    with pytest.raises(ScenarioError, match="not to 'scale-1'"):
        scenario(
            [hospital()], [{"type": "stuck_sensor", "at": "1h", "site": "h", "device": "scale-1"}]
        )


def test_unknown_metric_is_refused() -> None:
    message = _plan_error(
        [_plant(_STEAM)],
        {
            "type": "stuck_sensor",
            "at": "1h",
            "site": "p",
            "device": "steam-1",
            "params": {"metric": "rpm"},
        },
    )
    assert "no metric 'rpm'" in message


# The label window against the detector itself: scanned every 5 min over the run's data (as
# the platform's scheduled scan), the rule first fires inside [earliest, window_end].
WINDOW_CASES = [
    ("missing_bag", "scale-1", "8h", hospital(), "2d"),
    ("cold_room_warm", "env-1", "13h", hospital(profile=_COLD), "1d"),
    ("packing_without_disinfection", "line-1", "20h", _plant(_STEAM, _DISH, _LINE), "1d"),
    ("overdue_waste", "scale-1", "11h", hospital(), "4d"),
    ("no_uv", "env-1", "1d2h", hospital(), "3d"),
]


@pytest.mark.parametrize("case", WINDOW_CASES, ids=[c[0] for c in WINDOW_CASES])
def test_the_detector_fires_inside_the_label_window(
    case: tuple[str, str, str, dict[str, Any], str],
) -> None:
    fault_type, device, at, site, duration = case
    fault = {"type": fault_type, "at": at, "site": site["key"], "device": device}
    sc = scenario([site], [fault], duration=duration)
    sim, sink = run(sc)
    (label,) = sim.labels
    data = site_data(sink, sc, site["key"])
    (detector,) = [d for d in catalogue() if d.rule.id == label.rule]
    ref = f"{site['key']}/{device}"
    scan = timedelta(minutes=5)
    now = label.earliest - scan
    first = None
    while now <= label.window_end + scan:
        if any(f.state == "firing" and f.device_id == ref for f in detector(data, now)):
            first = now
            break
        now += scan
    assert first is not None
    assert label.earliest <= first <= label.window_end
    # Within one scan of the moment the label says the violation became detectable.
    assert first - label.detectable_at <= scan
