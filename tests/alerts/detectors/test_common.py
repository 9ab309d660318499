"""Shared building blocks: spells, compliant stretches, the state convention, local time."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from tests.alerts.detectors.factories import at, device, site
from weijian.alerts.detectors.common import (
    Point,
    bad_spells,
    current_state,
    day_bounds,
    device_now,
    floor_to,
    good_stretch,
    local_day,
    mmss,
    settle,
    stamps,
    stored_messages_of,
    within,
)
from weijian.alerts.models import Finding, SiteData
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Event, Reading

GAP = timedelta(seconds=60)


def points(flags: str, step_s: float = 10) -> list[Point]:
    """'b' bad, 'g' good, '-' not applicable, one per step."""
    table = {"b": True, "g": False, "-": None}
    return [Point(at(seconds=i * step_s), float(i), table[c]) for i, c in enumerate(flags)]


def test_bad_spells_know_how_they_ended() -> None:
    spells = bad_spells(points("gbbbgb-bb"), GAP)
    assert [(s.first, s.last) for s in spells] == [
        (at(seconds=10), at(seconds=30)),
        (at(seconds=50), at(seconds=50)),
        (at(seconds=70), at(seconds=80)),
    ]
    assert spells[0].end == at(seconds=30)  # the last bad sample; a good one ended it
    assert spells[0].ended_by_good
    assert spells[1].end == at(seconds=50)
    assert not spells[1].ended_by_good  # ended by data that does not apply
    assert spells[2].end is None  # still bad at the last point
    assert spells[0].duration == timedelta(seconds=20)


def test_a_gap_breaks_a_spell() -> None:
    spread = [Point(at(seconds=0), 1, True), Point(at(seconds=61), 1, True)]
    assert len(bad_spells(spread, GAP)) == 2


def test_good_stretch_needs_the_latest_point_good() -> None:
    assert good_stretch(points("bggg"), None, GAP) == (at(seconds=10), at(seconds=30), GAP / 3)
    assert good_stretch(points("ggb"), None, GAP) is None
    # Good time counts only between consecutive good points.
    stretch = good_stretch(points("gbgg-g"), None, GAP)
    assert stretch is not None
    assert stretch[2] == timedelta(seconds=10)


def finding(state: str, to: datetime, ended: datetime | None = None) -> Finding:
    return Finding(
        rule="r",
        site_id="s",
        device_id="d",
        state="firing" if state == "firing" else "clear",
        evidence_to=to,
        ended_at=ended,
    )


def test_current_state_open_firing_wins_else_latest_evidence() -> None:
    closed = finding("firing", at(minutes=1), ended=at(minutes=1))
    later_clear = finding("clear", at(minutes=2))
    assert current_state([closed, later_clear])["d", "r"].state == "clear"
    tie = finding("clear", at(minutes=1))
    assert current_state([tie, closed])["d", "r"].state == "firing"
    still_open = finding("firing", at(minutes=0))
    assert current_state([later_clear, still_open])["d", "r"].state == "firing"


def test_settle_drops_clears_while_something_is_open() -> None:
    open_one = finding("firing", at())
    clear = finding("clear", at(minutes=5))
    assert settle([open_one, clear]) == [open_one]
    closed = replace(open_one, ended_at=at())
    assert settle([closed, clear]) == [closed, clear]


def test_durations_are_never_rounded_up() -> None:
    assert mmss(timedelta(seconds=599.9)) == "9:59"
    assert mmss(timedelta(hours=1, seconds=5)) == "1:00:05"


def test_local_days_and_buckets() -> None:
    # 2026-11-23 16:30 UTC is 00:30 on the 24th in Shanghai.
    assert local_day(datetime(2026, 11, 23, 16, 30, tzinfo=UTC)) == date(2026, 11, 24)
    start, end = day_bounds(date(2026, 11, 24))
    assert start == datetime(2026, 11, 23, 16, 0, tzinfo=UTC)
    assert end - start == timedelta(days=1)
    assert floor_to(at(minutes=59, seconds=59), timedelta(hours=1)) == at()


def _lead_site(leads_s: list[float]) -> SiteData:
    """A cabinet whose readings (10 s apart) were received `lead` seconds before their stamp."""
    readings = [
        Reading(at(seconds=10 * i), "d1", "temp_c", 20.0, i, at(seconds=10 * i - lead))
        for i, lead in enumerate(leads_s)
    ]
    return site(device(DeviceKind.STEAM_CABINET, readings=readings))


def test_device_now_adds_the_lead_of_a_clock_running_ahead() -> None:
    s = _lead_site([20.0] * 10 + [25.0, 24.0])
    now = at(seconds=100)
    assert device_now(s, s.devices["d1"], now) == now + timedelta(seconds=25)


def test_device_now_never_goes_back_nor_further_than_the_allowed_skew() -> None:
    behind = _lead_site([-30.0] * 12)
    now = at(seconds=200)
    assert device_now(behind, behind.devices["d1"], now) == now
    # One wild stamp moves the cut by its lead, and by no more than clock_skew.max_s.
    wild = _lead_site([0.0] * 11 + [200.0])
    skew = wild.profile.number("clock_skew.max_s")
    assert skew < 3600
    assert device_now(wild, wild.devices["d1"], now) == now + timedelta(seconds=200)
    far = _lead_site([0.0] * 11 + [3600.0])
    assert device_now(far, far.devices["d1"], now) == now + timedelta(seconds=skew)


def test_device_now_ignores_what_had_not_arrived_by_now() -> None:
    # A backtest loads rows received after its `now`: they do not count towards the lead.
    s = _lead_site([0.0] * 10 + [25.0])
    early = at(seconds=90)  # the last reading (stamped 100 s) was received at 75 s
    assert device_now(s, s.devices["d1"], at(seconds=70)) == at(seconds=70)
    assert device_now(s, s.devices["d1"], early) == early + timedelta(seconds=25)


def test_stamps_are_the_messages_once_each_in_the_order_held() -> None:
    t0, t1, t2 = at(seconds=0), at(seconds=10), at(seconds=20)
    r0, r1 = at(seconds=1), at(seconds=11)
    readings = [
        Reading(t0, "d1", "a", 1.0, 5, r0),
        Reading(t0, "d1", "b", 2.0, 5, r0),
        Reading(t1, "d1", "a", 1.0, 6, r1),
        Reading(t1, "d1", "b", 2.0, 6, r1),
        Reading(t1, "d1", "c", 3.0, 6, r1),
        Reading(t2, "d1", "a", 1.0, None, None),
    ]
    events = [Event(t1, "d1", "door_open", {}, 7, r1)]
    dev = replace(device(DeviceKind.WASTE_STORE_ENV), readings=readings, events=events)
    assert stamps(dev) == [(t0, 5, r0), (t1, 6, r1), (t2, None, None), (t1, 7, r1)]
    assert stamps(dev) is stamps(dev)  # memoised per object


def test_a_slice_takes_its_part_of_the_whole_devices_stamps() -> None:
    base = at()
    readings = [
        Reading(base + timedelta(seconds=10 * i), "d1", m, float(i), i, base)
        for i in range(30)
        for m in ("a", "b")
    ]
    # An event sharing a reading's stamp: joined, the run is kept once.
    events = [Event(base + timedelta(seconds=290), "d1", "door_open", {}, 29, base)]
    whole = replace(
        device(DeviceKind.WASTE_STORE_ENV), readings=readings, events=events, ordered=True
    )
    assert len(stamps(whole)) == 30
    assert len(stored_messages_of(whole)) == 30  # the event shares seq 29 and its time
    for lo, hi in [(0, 290), (55, 120), (100, 100), (300, 400)]:
        start, end = base + timedelta(seconds=lo), base + timedelta(seconds=hi)
        part = within(whole, start, end)
        assert part.has("stamp_parts")  # seeded from the whole's
        fresh = replace(part)  # the same data, nothing memoised
        assert stamps(part) == stamps(fresh)
        assert stored_messages_of(part) == stored_messages_of(fresh)


def test_metric_index_keeps_each_metrics_readings_in_order() -> None:
    rows = [
        Reading(at(seconds=i), "d1", metric, float(i), i)
        for i in range(6)
        for metric in (("a", "b") if i % 2 else ("b",))
    ]
    dev = replace(device(DeviceKind.WASTE_STORE_ENV), readings=rows)
    index = dev.metric_index()
    assert list(index) == ["b", "a"]
    assert index["a"] == [r for r in rows if r.metric == "a"]
    assert index["b"] == [r for r in rows if r.metric == "b"]
    assert dev.series("missing") == []
