"""Medical-waste scale: storage time, weight reconciliation, missing bags."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.alerts.detectors.factories import at, clears, device, event, firing, site, state
from weijian.alerts.detectors.waste import (
    BagMissingDetector,
    StorageOverdueDetector,
    WeightMismatchDetector,
    ledger,
)
from weijian.alerts.models import SiteData
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Event

OVERDUE = StorageOverdueDetector()
WEIGHT = WeightMismatchDetector()
MISSING = BagMissingDetector()


def bag_in(
    bag: str, ts: datetime, kg: float = 2.0, category: str = "infectious", seq: int | None = None
) -> Event:
    return event(
        "d1", ts, "bag_in", seq=seq, bag_id=bag, weight_kg=kg, category=category, dept="外科"
    )


def bag_out(ts: datetime, bags: list[str], kg: float, manifest: str = "M1") -> Event:
    return event("d1", ts, "bag_out", bag_ids=bags, weight_kg=kg, manifest_no=manifest)


def scale(*events: Event) -> SiteData:
    return site(device(DeviceKind.WASTE_SCALE, events=events))


def test_storage_limits_exactly() -> None:
    s = scale(bag_in("B1", at()))
    assert OVERDUE(s, at(hours=35, minutes=59)) == []
    (warn,) = OVERDUE(s, at(hours=36))
    assert (warn.state, warn.severity, warn.limit) == ("firing", "warning", 36.0)
    assert OVERDUE(s, at(hours=47, minutes=59))[0].severity == "warning"
    # "不得超过 48 小时": the limit itself is still compliant.
    assert OVERDUE(s, at(hours=48))[0].severity == "warning"
    (major,) = OVERDUE(s, at(hours=48, seconds=1))
    assert (major.severity, major.limit, major.unit) == ("major", 48.0, "h")
    assert major.episode == warn.episode == "B1"
    assert major.ended_at is None
    assert "医疗废物袋 B1（感染性，2 kg，外科）" in major.summary


def test_hand_over_clears_and_a_late_one_is_a_closed_violation() -> None:
    on_time = scale(bag_in("B1", at()), bag_out(at(hours=40), ["B1"], 2.0))
    findings = OVERDUE(on_time, at(hours=50))
    assert firing(findings) == []
    assert state(findings) == "clear"
    late = scale(bag_in("B1", at()), bag_out(at(hours=50), ["B1"], 2.0))
    findings = OVERDUE(late, at(hours=51))
    (closed,) = firing(findings)
    assert closed.ended_at == at(hours=50)
    assert closed.severity == "major"
    assert state(findings) == "clear"  # the store holds nothing overdue any more


def test_an_overdue_bag_keeps_the_alert_firing_despite_other_hand_overs() -> None:
    s = scale(
        # Sharps: the infectious-only hand-over had no reason to take it (not suspected lost).
        bag_in("OLD", at(), category="sharps"),
        bag_in("NEW", at(hours=30)),
        bag_out(at(hours=31), ["NEW"], 2.0),
    )
    findings = OVERDUE(s, at(hours=49))
    assert clears(findings) == []
    assert state(findings) == "firing"


def test_a_bag_weighed_twice_counts_once_from_its_first_weighing() -> None:
    s = scale(
        bag_in("B1", at(), kg=2.0),
        bag_in("B1", at(hours=20), kg=2.5),  # re-weighed: the weight is corrected
        bag_out(at(hours=30), ["B1", "B1"], 2.5),
    )
    book = ledger(s.devices["d1"].events, at(hours=31))
    assert len(book.bags) == 1
    assert book.bags[0].in_at == at()
    assert book.handovers[0].expected_kg == 2.5
    assert firing(WEIGHT(s, at(hours=31))) == []


def test_a_resent_identical_event_is_ignored() -> None:
    s = scale(
        bag_in("B1", at(), seq=1), bag_in("B1", at(), seq=1), bag_out(at(hours=1), ["B1"], 2.0)
    )
    assert len(ledger(s.devices["d1"].events, at(hours=2)).bags) == 1


def test_weight_tolerance_exactly_2_percent_passes() -> None:
    def handover(kg: float) -> SiteData:
        return scale(
            bag_in("A", at(), kg=6.0),
            bag_in("B", at(minutes=1), kg=4.0),
            bag_out(at(hours=2), ["A", "B"], kg),
        )

    for kg in (10.2, 9.8):
        assert firing(WEIGHT(handover(kg), at(hours=3))) == []
    (over,) = WEIGHT(handover(10.21), at(hours=3))
    assert over.state == "firing"
    assert over.value == 2.1
    assert (over.limit, over.unit, over.episode) == (2.0, "%", "M1")
    assert "+2.1%" in over.summary
    (under,) = WEIGHT(handover(9.79), at(hours=3))
    assert under.value == -2.1


def test_a_hand_over_with_an_unknown_bag_gets_no_weight_verdict() -> None:
    s = scale(bag_in("A", at(), kg=6.0), bag_out(at(hours=2), ["A", "GHOST"], 20.0))
    assert WEIGHT(s, at(hours=3)) == []


def lost_bag(**overrides: float) -> SiteData:
    events = (
        bag_in("LOST", at()),
        bag_in("B2", at(minutes=5)),
        bag_out(at(hours=1), ["B2"], 2.0),
    )
    return site(device(DeviceKind.WASTE_SCALE, events=events), overrides=overrides)


def test_a_bag_is_missing_at_the_hand_over_that_leaves_it_out() -> None:
    # DOMAIN: "bag missing at hand-over" — transporters take all waste, so the hand-over
    # itself is the evidence (no grace by default).
    s = lost_bag()
    assert MISSING(s, at(minutes=59, seconds=59)) == []
    (finding,) = MISSING(s, at(hours=1))
    assert finding.severity == "critical"
    assert finding.episode == "LOST"
    assert finding.ended_at is None
    assert (finding.value, finding.limit) == (0.0, 0.0)
    assert "疑似流失" in finding.summary
    assert firing(MISSING(s, at(hours=30)))[0].value == 29.0


def test_a_grace_for_supplementary_hand_overs_is_a_profile_setting() -> None:
    s = lost_bag(**{"waste.bag_missing_grace_h": 12})
    assert MISSING(s, at(hours=12, minutes=59)) == []
    (finding,) = MISSING(s, at(hours=13))
    assert (finding.value, finding.limit) == (12.0, 12.0)
    # Within its grace the bag still counts as stored waste.
    patient = lost_bag(**{"waste.bag_missing_grace_h": 40})
    assert MISSING(patient, at(hours=37)) == []
    assert [(f.episode, f.severity) for f in firing(OVERDUE(patient, at(hours=37)))] == [
        ("LOST", "warning")
    ]


def test_a_missing_bag_is_not_also_overdue() -> None:
    s = lost_bag()
    assert firing(OVERDUE(s, at(hours=49))) == []
    assert firing(MISSING(s, at(hours=49)))[0].episode == "LOST"


def test_a_bag_weighed_in_while_the_transporter_loads_goes_next_time() -> None:
    def weighed_before(minutes: int) -> SiteData:
        return scale(
            bag_in("B1", at()),
            bag_in("LAST", at(hours=1, minutes=-minutes)),
            bag_out(at(hours=1), ["B1"], 2.0),
        )

    assert firing(MISSING(weighed_before(4), at(hours=2))) == []
    assert [f.episode for f in firing(MISSING(weighed_before(5), at(hours=2)))] == ["LAST"]


def test_a_supplementary_hand_over_finds_the_bag() -> None:
    s = scale(
        bag_in("LATE", at()),
        bag_in("B2", at(minutes=5)),
        bag_out(at(hours=1), ["B2"], 2.0),
        bag_out(at(hours=20), ["LATE"], 2.0, manifest="M2"),
    )
    assert [f.episode for f in firing(MISSING(s, at(hours=19)))] == ["LATE"]
    findings = MISSING(s, at(hours=21))
    assert firing(findings) == []
    assert clears(findings)[0].episode == "M2"


def test_a_hand_over_of_another_category_does_not_skip_the_bag() -> None:
    s = scale(
        bag_in("PATH", at(), category="pathological"),
        bag_in("B2", at(minutes=5)),
        bag_out(at(hours=1), ["B2"], 2.0),
    )
    assert firing(MISSING(s, at(hours=30))) == []


def test_a_bag_weighed_in_after_the_hand_over_is_not_missing() -> None:
    s = scale(bag_in("B2", at()), bag_out(at(hours=1), ["B2"], 2.0), bag_in("NEXT", at(hours=2)))
    assert firing(MISSING(s, at(hours=30))) == []


def test_events_in_the_future_of_now_are_ignored() -> None:
    s = scale(bag_in("B1", at()), bag_out(at(hours=60), ["B1"], 2.0))
    assert OVERDUE(s, at(hours=49))[0].ended_at is None


def test_a_bag_id_reused_after_hand_over_starts_a_new_stay() -> None:
    s = scale(
        bag_in("B1", at()),
        bag_out(at(hours=1), ["B1"], 2.0),
        bag_in("B1", at(hours=2)),
    )
    book = ledger(s.devices["d1"].events, at(hours=3))
    assert [(b.in_at, b.out_at) for b in book.bags] == [(at(), at(hours=1)), (at(hours=2), None)]
    assert OVERDUE(s, at(hours=2) + timedelta(hours=36))[0].started_at == at(hours=2)


def test_a_bag_weighed_in_without_a_weight_blocks_the_reconciliation() -> None:
    s = scale(
        event("d1", at(), "bag_in", bag_id="A", category="infectious"),
        bag_in("B", at(minutes=1), kg=4.0),
        bag_out(at(hours=2), ["A", "B"], 9.0),
    )
    assert WEIGHT(s, at(hours=3)) == []
