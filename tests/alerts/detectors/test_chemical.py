"""Chlorine tanks: strength while a basket is in, and immersion time per basket."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.alerts.detectors.factories import at, clears, device, event, firing, site, state, stream
from weijian.alerts.detectors.chemical import (
    ChlorineLowDetector,
    ImmersionShortDetector,
    compliant_times,
    immersions,
)
from weijian.alerts.models import SiteData
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Event

CHLORINE = ChlorineLowDetector()
IMMERSION = ImmersionShortDetector()


def dip(basket: str, start: datetime, seconds: float) -> list[Event]:
    return [
        event("d1", start, "basket_in", basket_id=basket),
        event("d1", start + timedelta(seconds=seconds), "basket_out", basket_id=basket),
    ]


def tank(values: list[float], events: list[Event]) -> SiteData:
    readings = stream("d1", at(), {"chlorine_mg_l": values}, step_s=30)
    return site(device(DeviceKind.CHLORINE_TANK, readings=readings, events=events))


def test_249_9_during_immersion_fires_and_250_passes() -> None:
    low = tank([260.0, 260.0, 249.9] + [260.0] * 20, dip("K1", at(), 360))
    (finding,) = firing(CHLORINE(low, at(hours=1)))
    assert finding.value == 249.9
    assert finding.limit == 250.0
    assert finding.unit == "mg/L"
    assert finding.episode == f"K1@{at().isoformat()}"
    assert finding.ended_at == at(seconds=360)
    exact = tank([250.0] * 23, dip("K1", at(), 360))
    assert firing(CHLORINE(exact, at(hours=1))) == []
    assert state(CHLORINE(exact, at(hours=1))) == "clear"


def test_low_chlorine_between_baskets_is_not_judged() -> None:
    # Dosing at 0–3 min (no basket); the basket goes in at 5 min.
    s = tank([100.0] * 6 + [300.0] * 20, dip("K1", at(minutes=5), 360))
    assert firing(CHLORINE(s, at(hours=1))) == []


def test_basket_still_in_with_low_chlorine_is_an_open_firing() -> None:
    s = tank([200.0] * 10, [event("d1", at(), "basket_in", basket_id="K1")])
    (finding,) = CHLORINE(s, at(minutes=4))
    assert finding.state == "firing"
    assert finding.ended_at is None
    # Compliant so far but still in: no verdict yet.
    ok = tank([300.0] * 10, [event("d1", at(), "basket_in", basket_id="K1")])
    assert CHLORINE(ok, at(minutes=4)) == []


def test_a_later_good_basket_clears() -> None:
    events = dip("K1", at(), 300) + dip("K1", at(minutes=20), 300)
    s = tank([200.0] * 12 + [300.0] * 40, events)
    findings = CHLORINE(s, at(hours=1))
    assert [f.state for f in findings] == ["firing", "clear"]
    assert state(findings) == "clear"


def test_immersion_of_4_59_is_short_and_5_00_is_enough() -> None:
    short = tank([300.0] * 12, dip("K1", at(), 299))
    (finding,) = firing(IMMERSION(short, at(hours=1)))
    assert finding.value == 299.0
    assert finding.limit == 300.0
    assert "4:59" in finding.summary
    enough = tank([300.0] * 12, dip("K1", at(), 300))
    assert firing(IMMERSION(enough, at(hours=1))) == []
    assert len(clears(IMMERSION(enough, at(hours=1)))) == 1


def test_baskets_pair_by_id_and_a_resent_basket_in_is_ignored() -> None:
    events = [
        event("d1", at(), "basket_in", basket_id="A"),
        event("d1", at(minutes=1), "basket_in", basket_id="B"),
        event("d1", at(minutes=2), "basket_in", basket_id="A"),  # resend: A is already in
        event("d1", at(minutes=4), "basket_out", basket_id="B"),  # B: 3 min, short
        event("d1", at(minutes=6), "basket_out", basket_id="A"),  # A: 6 min from the first in
    ]
    s = tank([300.0] * 20, events)
    found = immersions(s.devices["d1"], at(hours=1))
    assert [(i.basket_id, i.start, i.end) for i in found] == [
        ("A", at(), at(minutes=6)),
        ("B", at(minutes=1), at(minutes=4)),
    ]
    assert [f.details["basket_id"] for f in firing(IMMERSION(s, at(hours=1)))] == ["B"]


def test_out_of_order_events_are_sorted() -> None:
    events = list(reversed(dip("K1", at(), 200)))
    assert len(firing(IMMERSION(tank([300.0] * 10, events), at(hours=1)))) == 1


def test_a_basket_in_for_over_an_hour_lost_its_out_and_is_dropped() -> None:
    events = [
        event("d1", at(), "basket_in", basket_id="K1"),
        event("d1", at(hours=2), "basket_in", basket_id="K1"),
        event("d1", at(hours=2, minutes=6), "basket_out", basket_id="K1"),
    ]
    found = immersions(tank([300.0] * 10, events).devices["d1"], at(hours=3))
    assert [(i.start, i.end) for i in found] == [(at(hours=2), at(hours=2, minutes=6))]


def test_compliant_times_are_good_and_long_enough_immersions() -> None:
    events = dip("A", at(), 200) + dip("B", at(minutes=10), 330)
    s = tank([300.0] * 40, events)
    assert compliant_times(s.devices["d1"], s.profile, at(hours=1)) == [at(minutes=15, seconds=30)]
