"""Packing without effective disinfection (site level, on the line meter)."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.alerts.detectors.factories import at, device, event, firing, site, state, stream
from weijian.alerts.detectors.release import ReleaseDetector, increments
from weijian.alerts.models import DeviceData
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Reading

RELEASE = ReleaseDetector()
NOW = at(hours=6)


def counter(values: list[float], start: datetime, step_s: float = 60) -> list[Reading]:
    return stream("meter", start, {"packed_total": values}, step_s=step_s)


def meter(values: list[float], start: datetime) -> DeviceData:
    return device(DeviceKind.LINE_METER, "meter", readings=counter(values, start))


def cabinet_batch(end: datetime, hot: bool = True) -> DeviceData:
    """A steam batch of 11 min at temperature (or cold) ending at `end`."""
    start = end - timedelta(seconds=660)
    temps = stream("cab", start, {"temp_c": [101.0 if hot else 90.0] * 67})
    events = [
        event("cab", start, "batch_start", batch_id="B1"),
        event("cab", end, "batch_end", batch_id="B1"),
    ]
    return device(DeviceKind.STEAM_CABINET, "cab", readings=temps, events=events)


def packing(start: datetime, count: int = 30) -> DeviceData:
    return meter([100.0 + 5 * i for i in range(count)], start)


def test_increments_survive_a_counter_reset() -> None:
    values = [100.0, 110.0, 120.0, 3.0, 8.0]  # reboot after 120: restarted from zero
    assert [i.pieces for i in increments(counter(values, at()))] == [10.0, 10.0, 3.0, 5.0]


def test_a_small_drop_is_a_glitch_not_a_reset() -> None:
    values = [1000.0, 1010.0, 1005.0, 1020.0]  # a reordered sample, not a reboot
    assert [i.pieces for i in increments(counter(values, at()))] == [10.0, 10.0]


def test_packing_with_no_disinfection_at_all_is_critical() -> None:
    s = site(packing(at(hours=4)))
    findings = RELEASE(s, NOW)
    (finding,) = findings
    assert finding.state == "firing"
    assert finding.severity == "critical"
    assert finding.device_id == "meter"
    assert finding.value == 145.0
    assert finding.unit == "件"
    assert finding.episode == at(hours=4).isoformat()
    assert finding.ended_at is None
    assert "未经有效消毒" in finding.summary


def test_a_compliant_batch_within_the_lag_covers_packing() -> None:
    s = site(packing(at(hours=4)), cabinet_batch(at(hours=3)))
    findings = RELEASE(s, NOW)
    assert firing(findings) == []
    assert state(findings, "meter") == "clear"


def test_a_batch_that_failed_does_not_count() -> None:
    s = site(packing(at(hours=4)), cabinet_batch(at(hours=3), hot=False))
    assert len(firing(RELEASE(s, NOW))) == 1


def test_a_batch_older_than_the_lag_does_not_cover() -> None:
    s = site(packing(at(hours=5, minutes=10), 20), cabinet_batch(at(hours=3)))
    assert len(firing(RELEASE(s, NOW))) == 1


def test_later_disinfection_ends_the_episode_and_clears() -> None:
    # Packing from 4:00; the batch ending at 4:20 covers increments from 4:15 (clock skew).
    s = site(packing(at(hours=4), 60), cabinet_batch(at(hours=4, minutes=20)))
    findings = RELEASE(s, NOW)
    (fired,) = firing(findings)
    assert fired.ended_at == at(hours=4, minutes=14)  # the last uncovered increment
    assert state(findings, "meter") == "clear"


def test_increments_too_close_to_the_window_start_are_not_judged() -> None:
    # The window starts at 0:00; with a 2 h lag only increments from 2:00 are judged.
    s = site(packing(at(hours=0, minutes=30), 60))
    assert RELEASE(s, NOW) == []


def test_episodes_are_stable_across_runs() -> None:
    s = site(packing(at(hours=4), 100))
    first = {f.episode for f in firing(RELEASE(s, NOW))}
    again = {f.episode for f in firing(RELEASE(s, NOW + timedelta(minutes=7)))}
    assert first == again == {at(hours=4).isoformat(), at(hours=5).isoformat()}


def test_no_line_meter_no_findings() -> None:
    assert RELEASE(site(cabinet_batch(at(hours=3))), NOW) == []


def test_dish_and_chlorine_stages_count_too() -> None:
    dish_readings = stream(
        "dish",
        at(hours=3, minutes=50),
        {"conveyor_speed_m_min": [1.2] * 6, "rinse_temp_c": [88.0] * 6, "running": [1.0] * 6},
    )
    dish = device(DeviceKind.DISH_MACHINE, "dish", readings=dish_readings)
    assert firing(RELEASE(site(packing(at(hours=4)), dish), NOW)) == []
    chlorine = device(
        DeviceKind.CHLORINE_TANK,
        "tank",
        readings=stream("tank", at(hours=3), {"chlorine_mg_l": [300.0] * 20}, step_s=30),
        events=[
            event("tank", at(hours=3), "basket_in", basket_id="K"),
            event("tank", at(hours=3, minutes=6), "basket_out", basket_id="K"),
        ],
    )
    assert firing(RELEASE(site(packing(at(hours=4)), chlorine), NOW)) == []


def test_evidence_stamped_within_the_allowed_clock_skew_after_packing_counts() -> None:
    # Device clocks may differ by up to 5 min: a batch stamped 4:05 covers packing at 4:00.
    one = packing(at(hours=4), 2)  # a single increment at 4:01
    assert firing(RELEASE(site(one, cabinet_batch(at(hours=4, minutes=6))), NOW)) == []
    assert firing(RELEASE(site(one, cabinet_batch(at(hours=4, minutes=7))), NOW))


def test_increments_within_the_skew_of_now_wait_for_their_evidence() -> None:
    s = site(packing(NOW - timedelta(minutes=4), 4))
    assert RELEASE(s, NOW) == []
    assert firing(RELEASE(s, NOW + timedelta(minutes=5)))
