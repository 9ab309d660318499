"""The presence throttle: status at once, activity once per interval, nothing lost (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from weijian.ingest.presence import PresenceThrottle, merge
from weijian.ingest.repository import Presence

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


def heard(device: str, at_s: float, seq: int, online: bool | None = None) -> Presence:
    at = T0 + timedelta(seconds=at_s)
    return Presence(
        device_id=device,
        last_seen_at=at,
        last_seq=seq,
        online=online,
        status_at=at if online is not None else None,
        earliest=at,
    )


def test_first_activity_is_written_then_held_for_the_interval() -> None:
    throttle = PresenceThrottle(5.0)
    assert [p.last_seq for p in throttle.due([heard("a", 0, 1)], now=0.0)] == [1]
    assert throttle.due([heard("a", 1, 2)], now=1.0) == []
    assert throttle.due([heard("a", 2, 3)], now=2.0) == []
    assert throttle.held == 1
    # The interval has passed: what was held goes out folded with the new activity.
    (written,) = throttle.due([heard("a", 5, 4)], now=5.0)
    assert written.last_seq == 4
    assert written.last_seen_at == T0 + timedelta(seconds=5)
    assert written.earliest == T0 + timedelta(seconds=1)
    assert throttle.held == 0


def test_a_status_is_written_at_once_with_the_held_activity() -> None:
    throttle = PresenceThrottle(5.0)
    throttle.due([heard("a", 0, 1)], now=0.0)
    throttle.due([heard("a", 1, 2)], now=1.0)
    (written,) = throttle.due([heard("a", 2, 3, online=False)], now=2.0)
    assert written.online is False
    assert written.last_seq == 3
    assert written.status_at == T0 + timedelta(seconds=2)


def test_a_device_that_falls_silent_gets_its_last_activity_written_by_a_later_batch() -> None:
    throttle = PresenceThrottle(5.0)
    throttle.due([heard("a", 0, 1)], now=0.0)
    throttle.due([heard("a", 1, 2)], now=1.0)  # held; "a" is not heard again
    assert throttle.due([heard("b", 3, 1)], now=3.0) == [heard("b", 3, 1)]
    swept = throttle.due([heard("b", 6, 2)], now=6.0)
    assert {p.device_id: p.last_seq for p in swept} == {"a": 2}


def test_flush_hands_out_everything_held_and_restore_takes_it_back() -> None:
    throttle = PresenceThrottle(5.0)
    throttle.due([heard("a", 0, 1), heard("b", 0, 1)], now=0.0)
    throttle.due([heard("a", 1, 2), heard("b", 1, 2)], now=1.0)
    flushed = throttle.flush(now=1.5)
    assert sorted(p.device_id for p in flushed) == ["a", "b"]
    assert throttle.held == 0
    throttle.restore(flushed)  # the write failed
    throttle.due([heard("a", 2, 3)], now=2.0)
    assert {p.device_id: p.last_seq for p in throttle.flush(now=2.5)} == {"a": 3, "b": 2}


def test_no_interval_writes_every_update() -> None:
    throttle = PresenceThrottle(0.0)
    assert len(throttle.due([heard("a", 0, 1)], now=0.0)) == 1
    assert len(throttle.due([heard("a", 0.1, 2)], now=0.1)) == 1


def test_merge_keeps_the_latest_status_and_the_highest_seq() -> None:
    old_status = heard("a", 0, 9, online=True)
    newer_activity = heard("a", 3, 4)
    merged = merge(old_status, newer_activity)
    assert merged.online is True
    assert merged.status_at == T0
    assert merged.last_seq == 9
    assert merged.last_seen_at == T0 + timedelta(seconds=3)
    assert merged.earliest == T0
