"""Thermal cabinet batches: peak temperature and continuous hold."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.alerts.detectors.factories import at, device, event, firing, site, state, stream
from weijian.alerts.detectors.thermal import ThermalBatchDetector, compliant_times
from weijian.alerts.models import SiteData
from weijian.devices.kinds import DeviceKind

LOW = ThermalBatchDetector("disinfection.temperature_low")
SHORT = ThermalBatchDetector("disinfection.hold_time_short")


def batch_site(temps: list[float], batch_id: str = "B1", step_s: float = 10) -> SiteData:
    """A steam batch: 1 min warm-up at 80 °C, then `temps` every `step_s`, then the end."""
    start = at()
    warm = [80.0] * 6
    readings = stream("d1", start, {"temp_c": warm + temps}, step_s=step_s)
    end = readings[-1].ts
    events = [
        event("d1", start, "batch_start", batch_id=batch_id),
        event("d1", end, "batch_end", batch_id=batch_id),
    ]
    return site(device(DeviceKind.STEAM_CABINET, readings=readings, events=events))


def end_of(s: SiteData) -> datetime:
    return max(e.ts for e in s.devices["d1"].events)


def test_hold_of_9_59_is_short_and_10_00_is_enough() -> None:
    # 60 samples 10 s apart span 9:50; 61 span 10:00. A 9:59 hold needs 1 s sampling.
    short = batch_site([101.0] * 600, step_s=1)  # 599 s between the first and last sample
    enough = batch_site([101.0] * 61)
    (finding,) = firing(SHORT(short, end_of(short)))
    assert finding.value == 599.0
    assert finding.limit == 600.0
    assert finding.unit == "s"
    assert finding.episode == "B1"
    assert "9:59" in finding.summary
    assert firing(SHORT(enough, end_of(enough))) == []
    assert state(SHORT(enough, end_of(enough))) == "clear"


def test_peak_of_99_9_is_too_low_and_100_0_passes() -> None:
    cold = batch_site([99.9] * 70)
    hot = batch_site([100.0] * 70)
    (finding,) = firing(LOW(cold, end_of(cold)))
    assert finding.value == 99.9
    assert finding.limit == 100.0
    assert finding.unit == "°C"
    assert firing(LOW(hot, end_of(hot))) == []
    # A batch that never reached temperature is not also a short hold.
    assert firing(SHORT(cold, end_of(cold))) == []


def test_a_20_second_dip_restarts_the_hold() -> None:
    # 6 min at temperature, a 20 s dip (two samples), 6 min again: 12 min in total, but the
    # longest continuous hold is 6 min, so the batch fails.
    temps = [101.0] * 37 + [99.5, 99.5] + [101.0] * 37
    s = batch_site(temps)
    (finding,) = firing(SHORT(s, end_of(s)))
    assert finding.value == 360.0


def test_a_sample_gap_longer_than_allowed_breaks_the_hold() -> None:
    s = batch_site([101.0] * 70, step_s=61)
    assert firing(SHORT(s, end_of(s)))[0].value == 0.0


def test_open_batch_and_batch_ending_after_now_are_not_judged() -> None:
    s = batch_site([90.0] * 70)
    assert LOW(s, at(minutes=5)) == []  # its batch_end lies after `now`
    readings = stream("d1", at(), {"temp_c": [90.0] * 70})
    started = site(
        device(
            DeviceKind.STEAM_CABINET,
            readings=readings,
            events=[event("d1", at(), "batch_start", batch_id="B9")],
        )
    )
    assert LOW(started, at(hours=1)) == []


def test_later_compliant_batch_clears_and_counts_as_effective() -> None:
    bad = stream("d1", at(), {"temp_c": [95.0] * 70})
    good = stream("d1", at(hours=1), {"temp_c": [101.0] * 70})
    events = [
        event("d1", at(), "batch_start", batch_id="B1"),
        event("d1", bad[-1].ts, "batch_end", batch_id="B1"),
        event("d1", at(hours=1), "batch_start", batch_id="B2"),
        event("d1", good[-1].ts, "batch_end", batch_id="B2"),
    ]
    cabinet = device(DeviceKind.STEAM_CABINET, readings=bad + good, events=events)
    s = site(cabinet)
    findings = LOW(s, at(hours=2))
    assert [(f.state, f.episode) for f in findings] == [("firing", "B1"), ("clear", "B2")]
    assert state(findings) == "clear"
    assert compliant_times(cabinet, s.profile, at(hours=2)) == [good[-1].ts]


def test_infrared_cabinet_uses_its_own_limit() -> None:
    readings = stream("d1", at(), {"temp_c": [110.0] * 70})
    events = [
        event("d1", at(), "batch_start", batch_id="IR1"),
        event("d1", readings[-1].ts, "batch_end", batch_id="IR1"),
    ]
    s = site(device(DeviceKind.INFRARED_CABINET, readings=readings, events=events))
    (finding,) = firing(LOW(s, at(hours=1)))
    assert finding.limit == 120.0


def _cabinet_with_end_after_last_reading(
    *, lag_s: float = 1.0, drop_seq: int | None = None
) -> SiteData:
    """A 12-min batch too cold to pass: readings every 10 s (seqs 1…), its batch_end 5 s after
    the last of them with the next seq. `lag_s`: receive time − device time (negative: a
    clock running ahead); `drop_seq`: a message that has not arrived."""
    start = at()
    readings = stream("d1", start, {"temp_c": [90.0] * 73}, seq0=1, lag_s=lag_s)
    readings = [r for r in readings if r.seq != drop_seq]
    end = start + timedelta(seconds=72 * 10 + 5)
    events = [
        event("d1", start, "batch_start", seq=0, batch_id="B1"),
        event("d1", end, "batch_end", seq=74, batch_id="B1"),
    ]
    return site(device(DeviceKind.STEAM_CABINET, readings=readings, events=events))


def test_a_batch_whose_counter_shows_every_message_is_judged_at_once() -> None:
    s = _cabinet_with_end_after_last_reading()
    now = end_of(s) + timedelta(seconds=1)
    # No reading from the batch end on yet and `hold.settle_s` not over, but seqs 1–73 all
    # arrived between the start (0) and end (74) events: nothing more of the batch can come.
    assert len(firing(LOW(s, now))) == 1


def test_a_batch_with_a_message_still_missing_waits_for_it_or_for_the_settle_time() -> None:
    s = _cabinet_with_end_after_last_reading(drop_seq=40)
    end = end_of(s)
    assert LOW(s, end + timedelta(seconds=1)) == []
    settle = s.profile.number("hold.settle_s")
    assert len(firing(LOW(s, end + timedelta(seconds=settle)))) == 1


def test_a_cabinet_clock_running_ahead_is_judged_on_its_own_clock() -> None:
    # The clock runs 25 s ahead: the batch end is stamped 25 s after the platform received
    # it. Judged at the platform's time of receipt (+1 s), the batch is already over there.
    s = _cabinet_with_end_after_last_reading(lag_s=-25)
    received = end_of(s) - timedelta(seconds=25)
    assert len(firing(LOW(s, received + timedelta(seconds=1)))) == 1


def test_a_clock_behind_or_no_receive_times_keep_the_platform_time() -> None:
    s = _cabinet_with_end_after_last_reading(lag_s=30)  # 30 s behind: stamped before receipt
    assert LOW(s, end_of(s) - timedelta(seconds=1)) == []
