"""data.clock_skew, data.sequence_gap, data.replay."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from tests.alerts.detectors.factories import at, device, event, firing, site, state
from weijian.alerts.detectors.transport import (
    ClockSkewDetector,
    ReplayDetector,
    SequenceGapDetector,
    boot_segments,
    counts_up,
    gaps,
    messages,
    replays,
)
from weijian.alerts.models import SiteData
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Reading

SKEW = ClockSkewDetector()
GAP = SequenceGapDetector()
REPLAY = ReplayDetector()


def msg(seq: int, ts: datetime, received: datetime | None = None, value: float = 20.0) -> Reading:
    return Reading(ts, "d1", "temp_c", value, seq, received or ts + timedelta(seconds=1))


def env(readings: list[Reading]) -> SiteData:
    return site(device(DeviceKind.WASTE_STORE_ENV, readings=readings))


def steady(seqs: range, start: datetime, step_s: float = 60, skew_s: float = 0) -> list[Reading]:
    """One message per step; the device clock is `skew_s` ahead of the receive time."""
    out = []
    for i, seq in enumerate(seqs):
        received = start + timedelta(seconds=i * step_s)
        out.append(msg(seq, received + timedelta(seconds=skew_s), received))
    return out


def test_a_clock_20_min_ahead_fires() -> None:
    findings = SKEW(env(steady(range(60), at(), skew_s=1200)), at(hours=2))
    (finding,) = findings
    assert finding.state == "firing"
    assert finding.value == 1200.0
    assert finding.limit == 300.0
    assert "快 20.0 分钟" in finding.summary


def test_skew_at_the_limit_passes_and_a_single_stray_bucket_does_not_fire() -> None:
    assert firing(SKEW(env(steady(range(60), at(), skew_s=300)), at(hours=2))) == []
    readings = steady(range(60), at())
    readings[30] = msg(30, at(minutes=30) + timedelta(hours=1), at(minutes=30))
    assert firing(SKEW(env(readings), at(hours=2))) == []


def test_a_late_backlog_is_not_skew() -> None:
    # Offline 0:00–1:00, then the backlog (old device times) arrives at 1:00 with live data.
    live = steady(range(0, 60), at(minutes=-60))
    backlog = [msg(60 + i, at(minutes=i), at(hours=1)) for i in range(60)]
    after = steady(range(120, 180), at(hours=1))
    findings = SKEW(env(live + backlog + after), at(hours=2))
    assert firing(findings) == []
    assert state(findings) == "clear"


def test_a_clock_that_jumps_fires_from_the_jump_and_clears_when_fixed() -> None:
    normal = steady(range(0, 30), at())
    jumped = steady(range(30, 60), at(minutes=30), skew_s=-3600)
    fixed = steady(range(60, 90), at(minutes=60))
    (skewed,) = SKEW(env(normal + jumped), at(hours=2))
    assert skewed.started_at == at(minutes=30)
    assert skewed.value == -3600.0
    assert "慢" in skewed.summary
    findings = SKEW(env(normal + jumped + fixed), at(hours=2))
    assert state(findings) == "clear"
    assert findings[-1].episode == skewed.episode


def test_a_gap_in_seq_fires_once_the_grace_has_passed() -> None:
    readings = steady(range(0, 10), at()) + steady(range(60, 70), at(minutes=10))
    s = env(readings)
    arrived = readings[10].received_at
    assert arrived is not None
    assert firing(GAP(s, arrived + timedelta(seconds=299))) == []
    (finding,) = firing(GAP(s, arrived + timedelta(seconds=300)))
    assert finding.value == 50.0
    assert finding.unit == "条"
    assert "10–59" in finding.summary
    assert finding.episode == at().isoformat()


def test_a_reboot_is_not_a_gap() -> None:
    readings = steady(range(500, 520), at()) + steady(range(0, 20), at(minutes=20))
    s = env(readings)
    assert len(boot_segments(messages(s.devices["d1"], at(hours=1)), 1)) == 2
    assert firing(GAP(s, at(hours=1))) == []
    assert firing(REPLAY(s, at(hours=1))) == []


def test_out_of_order_arrival_after_an_outage_is_not_a_gap() -> None:
    before = steady(range(0, 10), at())
    # Messages 10..69 were kept by the device and arrive shuffled, after live ones.
    live = steady(range(70, 80), at(minutes=70))
    backlog = [
        msg(s, at(minutes=s), at(minutes=70, seconds=5 + (s * 7) % 50)) for s in range(10, 70)
    ]
    s = env(before + live + list(reversed(backlog)))
    findings = GAP(s, at(hours=1, minutes=50))
    assert firing(findings) == []
    assert state(findings) == "clear"


def test_a_backlog_still_arriving_gives_no_verdict() -> None:
    before = steady(range(0, 10), at())
    live = steady(range(70, 80), at(minutes=70))
    assert GAP(env(before + live), at(minutes=72)) == []


def test_readings_and_events_share_the_counter() -> None:
    readings = steady(range(0, 5), at()) + steady(range(6, 40), at(minutes=6))
    events = [event("d1", at(minutes=5, seconds=30), "bag_in", seq=5, bag_id="B1")]
    s = site(device(DeviceKind.WASTE_STORE_ENV, readings=readings, events=events))
    assert firing(GAP(s, at(hours=1))) == []


def test_a_replay_is_an_old_seq_at_a_new_time() -> None:
    readings = steady(range(0, 60), at())
    replayed = [
        msg(seq, at(minutes=60, seconds=seq - 50), at(minutes=60, seconds=2))
        for seq in range(50, 55)
    ]
    s = env(readings + replayed)
    (finding,) = firing(REPLAY(s, at(hours=2)))
    assert finding.value == 5.0
    assert finding.severity == "major"
    assert finding.details["seqs"] == [50, 51, 52, 53, 54]
    assert "疑似重放" in finding.summary
    assert firing(GAP(s, at(hours=2))) == []


def test_a_replay_with_the_same_time_but_other_values_is_caught_when_it_reaches_us() -> None:
    readings = steady(range(0, 10), at())
    readings.append(msg(5, readings[5].ts, at(minutes=20), value=99.0))
    assert len(firing(REPLAY(env(readings), at(hours=1)))) == 1


def test_a_replayed_seq_zero_is_not_taken_for_a_reboot() -> None:
    readings = steady(range(0, 60), at())
    replay = msg(0, at(minutes=60), at(minutes=60, seconds=1))
    after = steady(range(60, 70), at(minutes=61))
    s = env([*readings, replay, *after])
    assert len(boot_segments(messages(s.devices["d1"], at(hours=2)), 1)) == 1
    assert len(firing(REPLAY(s, at(hours=2)))) == 1


def test_a_quality_of_service_resend_is_no_replay() -> None:
    readings = steady(range(0, 10), at())
    readings.append(readings[3])
    assert firing(REPLAY(env(readings), at(hours=1))) == []


def test_replay_clears_after_half_an_hour_of_clean_data() -> None:
    readings = steady(range(0, 60), at())
    replayed = [msg(10, at(minutes=60), at(minutes=60, seconds=2))]
    later = steady(range(60, 95), at(minutes=61))
    findings = REPLAY(env(readings + replayed + later), at(hours=3))
    assert state(findings) == "clear"


def test_a_clock_back_from_running_ahead_leaves_no_false_gap() -> None:
    # 20 min ahead until 1:00; the last 20 min of those messages are stamped after `now`.
    ahead = steady(range(0, 60), at(), skew_s=1200)
    normal = steady(range(60, 80), at(hours=1))
    now = at(hours=1, minutes=10)
    visible = [r for r in ahead + normal if r.ts <= now]
    assert {r.seq for r in visible} == set(range(0, 51)) | set(range(60, 71))
    assert firing(GAP(env(visible), now)) == []


def test_stored_data_gives_the_same_messages_as_the_general_path() -> None:
    # A resend of seq 3 later with another time (a replay), seq 5 split over two receipts
    # (a resend that added a metric), a reading without seq, and an event sharing a seq.
    base = at()
    readings = [
        msg(1, base),
        msg(2, base + timedelta(minutes=1)),
        msg(3, base + timedelta(minutes=2)),
        msg(3, base + timedelta(minutes=9), base + timedelta(minutes=9, seconds=30)),
        Reading(base + timedelta(minutes=4), "d1", "temp_c", 21.0, 5, base + timedelta(minutes=6)),
        Reading(
            base + timedelta(minutes=4), "d1", "humidity_pct", 40.0, 5, base + timedelta(minutes=5)
        ),
        Reading(base + timedelta(minutes=5), "d1", "temp_c", 20.0, None, base),
    ]
    events = [event("d1", base + timedelta(minutes=7), "bag_in", seq=6, bag_id="b1")]
    readings.sort(key=lambda r: r.ts)
    stored = replace(
        device(DeviceKind.WASTE_STORE_ENV, readings=readings, events=events), ordered=True
    )
    loose = device(DeviceKind.WASTE_STORE_ENV, readings=reversed(readings), events=events)
    now = at(hours=1)
    assert messages(stored, now) == messages(loose, now)
    assert [(m.seq, m.received_at) for m in messages(stored, now)][3] == (
        5,
        base + timedelta(minutes=5),
    )


def test_rising_seqs_take_the_short_way_to_the_same_gaps_and_no_replays() -> None:
    base = at()
    cases = {
        "gaps only": ([1, 2, 5, 6, 9], True),
        "a reboot": ([7, 8, 0, 1, 2], False),
        "a repeat": ([1, 2, 2, 3], False),
        "out of order": ([1, 3, 2, 4], False),
    }
    for name, (seqs, rising) in cases.items():
        readings = [msg(seq, base + timedelta(minutes=i)) for i, seq in enumerate(seqs)]
        stored = replace(device(DeviceKind.WASTE_STORE_ENV, readings=readings), ordered=True)
        now = at(hours=1)
        assert counts_up(stored, now) is rising, name
        found = messages(stored, now)
        if rising:
            assert gaps(found, 1, rising=True) == gaps(found, 1), name
            assert replays(found, 1) == [], name
    # The same (seq, time) with other values is a conflicting copy, never "rising".
    readings = [msg(1, base), msg(2, base + timedelta(minutes=1))]
    copy = msg(2, base + timedelta(minutes=1), value=99.0)
    conflicted = device(DeviceKind.WASTE_STORE_ENV, readings=[*readings, copy])
    assert not counts_up(conflicted, at(hours=1))


def test_a_clock_set_back_leaves_no_false_gap_when_judged_from_the_horizon() -> None:
    # Seqs 0–59 a minute apart (at :30) until 1:00, then the clock is set back 30 min (and
    # 10 ms): seqs 60–99 are stamped from 0:30:29.99 on, each just before an earlier seq of
    # the same minute. The part from the last message before 1:00 (seq 59 at 0:59:30) holds
    # seq 90 next, as if 60–89 were missing — they are stamped earlier. The stream, judging
    # from its horizon, must see what the whole lookback sees: no gap.
    before = steady(range(0, 60), at(seconds=30))
    back = timedelta(minutes=30, milliseconds=10)
    after = [
        msg(seq, at(hours=1, minutes=i, seconds=30) - back, at(hours=1, minutes=i, seconds=30))
        for i, seq in enumerate(range(60, 100))
    ]
    now = at(hours=1, minutes=40)
    data = replace(
        device(DeviceKind.WASTE_STORE_ENV, readings=sorted(before + after, key=lambda r: r.ts)),
        ordered=True,
    )
    whole = replace(env([]), devices={"d1": data})
    assert firing(GAP(whole, now)) == []
    narrowed = replace(whole, fresh={("data.sequence_gap", "d1"): now - timedelta(minutes=1)})
    assert firing(GAP(narrowed, now)) == []


def test_a_clock_set_back_leaves_no_false_gap_where_the_window_cuts_its_messages() -> None:
    # Seqs 0–59 a minute apart until 1:00, then the clock is set back 30 min: seqs 60… are
    # stamped from 0:30:30 on. Judged at 2:31 (device time), the 2 h window starts at 0:31,
    # so seq 60 (stamped 0:30:30) lies before it while seq 59 (0:59:30) and 61 are inside:
    # seq 60 is not missing, only out of the window.
    before = steady(range(0, 60), at(seconds=30))
    back = timedelta(minutes=30)
    after = [
        msg(seq, at(hours=1, minutes=i, seconds=30) - back, at(hours=1, minutes=i, seconds=30))
        for i, seq in enumerate(range(60, 150))
    ]
    data = replace(
        device(DeviceKind.WASTE_STORE_ENV, readings=sorted(before + after, key=lambda r: r.ts)),
        ordered=True,
    )
    s = replace(env([]), devices={"d1": data})
    assert firing(GAP(s, at(hours=2, minutes=31))) == []
    # A message really lost after the jump is still a gap.
    lost = replace(data, readings=[r for r in data.readings if r.seq != 120])
    (gap,) = firing(GAP(replace(s, devices={"d1": lost}), at(hours=2, minutes=31)))
    assert gap.value == 1.0
