"""Dish machines: exposure = zone length ÷ belt speed, and rinse temperature, while running."""

from __future__ import annotations

from collections.abc import Sequence

from tests.alerts.detectors.factories import at, clears, constant, device, firing, site, state
from tests.alerts.detectors.factories import stream as make_stream
from weijian.alerts.detectors import catalogue
from weijian.alerts.detectors.dish import (
    DishExposureDetector,
    DishRinseDetector,
    compliant_times,
)
from weijian.alerts.models import SiteData
from weijian.devices.kinds import DeviceKind

EXPOSURE = DishExposureDetector()
RINSE = DishRinseDetector()


def machine(
    speeds: Sequence[float],
    rinse: Sequence[float] | None = None,
    running: Sequence[float] | None = None,
) -> SiteData:
    n = len(speeds)
    values = {
        "conveyor_speed_m_min": list(speeds),
        "rinse_temp_c": list(rinse or constant(88.0, n)),
        "running": list(running or constant(1.0, n)),
    }
    return site(device(DeviceKind.DISH_MACHINE, readings=make_stream("d1", at(), values)))


def test_exposure_of_exactly_40_s_passes_and_39_9_fails() -> None:
    # 1 m zone: 1.5 m/min gives 40.0 s; 1.504 m/min gives 39.89 s.
    ok = machine(constant(1.5, 20))
    assert firing(EXPOSURE(ok, at(hours=1))) == []
    fast = machine(constant(1.5, 5) + constant(1.504, 3) + constant(1.5, 12))
    (finding,) = firing(EXPOSURE(fast, at(hours=1)))
    assert finding.value is not None
    assert round(finding.value, 2) == 39.89
    assert finding.limit == 40.0
    assert finding.unit == "s"
    assert finding.evidence_from == at(seconds=50)
    assert finding.ended_at == finding.evidence_to == at(seconds=70)  # the last fast sample
    assert finding.episode == f"conveyor_speed_m_min@{at(seconds=50).isoformat()}"
    assert "1.50 m/min" in finding.summary


def test_exposure_clears_after_one_full_exposure_time_of_compliant_running() -> None:
    short_tail = machine(constant(2.0, 5) + constant(1.5, 4))  # 30 s compliant
    assert clears(EXPOSURE(short_tail, at(hours=1))) == []
    long_tail = machine(constant(2.0, 5) + constant(1.5, 5))  # 40 s compliant
    findings = EXPOSURE(long_tail, at(hours=1))
    assert state(findings) == "clear"
    assert clears(findings)[0].episode == firing(findings)[0].episode


def test_a_stopped_machine_is_not_judged() -> None:
    stopped = machine(constant(5.0, 10), running=constant(0.0, 10))
    assert EXPOSURE(stopped, at(hours=1)) == []
    assert RINSE(stopped, at(hours=1)) == []


def test_a_fast_spell_still_going_is_open() -> None:
    fast = machine(constant(1.5, 5) + constant(3.0, 5))
    findings = EXPOSURE(fast, at(hours=1))
    assert [f.ended_at for f in findings] == [None]
    assert state(findings) == "firing"


def test_rinse_of_84_9_fails_and_85_0_passes_under_temperature_low() -> None:
    cold = machine(constant(1.5, 10), rinse=[*constant(85.0, 4), 84.9, *constant(85.0, 5)])
    (finding,) = firing(RINSE(cold, at(hours=1)))
    assert finding.rule == "disinfection.temperature_low"
    assert finding.value == 84.9
    assert finding.limit == 85.0
    assert finding.evidence_metric == "rinse_temp_c"
    assert firing(RINSE(machine(constant(1.5, 10)), at(hours=1))) == []


def test_catalogue_judges_dish_rinse_under_the_temperature_rule() -> None:
    cold = machine(constant(1.5, 10), rinse=constant(80.0, 10))
    (group,) = [d for d in catalogue() if d.rule.id == "disinfection.temperature_low"]
    assert DeviceKind.DISH_MACHINE in group.device_kinds
    assert DeviceKind.STEAM_CABINET in group.device_kinds
    assert [f.device_id for f in firing(group(cold, at(hours=1)))] == ["d1"]


def test_without_a_running_flag_a_moving_belt_counts_as_running() -> None:
    values = {"conveyor_speed_m_min": constant(3.0, 5)}
    s = site(device(DeviceKind.DISH_MACHINE, readings=make_stream("d1", at(), values)))
    assert len(firing(EXPOSURE(s, at(hours=1)))) == 1


def test_compliant_times_need_both_exposure_and_rinse() -> None:
    s = machine(constant(1.5, 4), rinse=[88.0, 80.0, 88.0, 88.0])
    dev = s.devices["d1"]
    assert compliant_times(dev, s.profile, at(hours=1)) == [at(), at(seconds=20), at(seconds=30)]


def test_zone_length_comes_from_the_device_profile() -> None:
    s = machine(constant(2.0, 10))  # 1 m: 30 s, too short
    longer = site(*s.devices.values(), device_overrides={"d1": {"dish.zone_length_m": 1.5}})
    assert firing(EXPOSURE(s, at(hours=1)))
    assert firing(EXPOSURE(longer, at(hours=1))) == []  # 1.5 m: 45 s
