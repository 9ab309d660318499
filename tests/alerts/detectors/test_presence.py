"""device.offline: silence measured on receive time."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from tests.alerts.detectors.factories import at, device, site, state, stream
from weijian.alerts.detectors.presence import OfflineDetector, offline_after
from weijian.alerts.models import SiteData
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Reading

OFFLINE = OfflineDetector()


def cabinet(
    readings: list[Reading] | None = None,
    last_seen: datetime | None = None,
    online: bool | None = None,
) -> SiteData:
    kind = DeviceKind.STEAM_CABINET
    return site(device(kind, readings=readings or (), last_seen=last_seen, online=online))


def test_silent_9_59_is_online_10_00_is_offline() -> None:
    s = cabinet(last_seen=at())
    assert state(OFFLINE(s, at(minutes=9, seconds=59))) == "clear"
    (finding,) = OFFLINE(s, at(minutes=10))
    assert finding.state == "firing"
    assert finding.severity == "warning"
    assert (finding.value, finding.limit, finding.unit) == (600.0, 600.0, "s")
    assert finding.episode == at().isoformat()
    assert finding.ended_at is None


def test_threshold_is_three_intervals_or_ten_minutes() -> None:
    chlorine = site(device(DeviceKind.CHLORINE_TANK, last_seen=at()))
    env = site(device(DeviceKind.WASTE_STORE_ENV))
    assert offline_after(chlorine, chlorine.devices["d1"]) == timedelta(minutes=10)
    slow = site(*chlorine.devices.values(), device_overrides={"d1": {"offline.interval_s": 300}})
    assert offline_after(slow, slow.devices["d1"]) == timedelta(minutes=15)
    scale = site(device(DeviceKind.WASTE_SCALE))
    assert offline_after(scale, scale.devices["d1"]) == timedelta(minutes=15)  # 3 × 300 s
    assert offline_after(env, env.devices["d1"]) == timedelta(minutes=10)


def test_severity_rises_after_a_day() -> None:
    s = cabinet(last_seen=at())
    (finding,) = OFFLINE(s, at(hours=24))
    assert finding.severity == "major"
    assert finding.episode == at().isoformat()  # the same episode: severity rises


def test_without_last_seen_the_latest_receive_time_counts() -> None:
    readings = stream("d1", at(), {"temp_c": [20.0] * 3})
    assert state(OFFLINE(cabinet(readings=readings), at(minutes=5))) == "clear"
    assert state(OFFLINE(cabinet(readings=readings), at(minutes=30))) == "firing"
    assert OFFLINE(cabinet(), at()) == []  # never heard from: nothing to measure


def test_a_late_backlog_counts_as_presence_not_its_device_time() -> None:
    # Device time of the backlog is an hour old, but it was received just now.
    backlog = [
        Reading(at(minutes=m), "d1", "temp_c", 20.0, m, at(hours=1, seconds=5)) for m in range(60)
    ]
    assert state(OFFLINE(cabinet(readings=backlog), at(hours=1, minutes=1))) == "clear"


def test_back_online_clears_the_outage_episode() -> None:
    before = stream("d1", at(), {"temp_c": [20.0] * 6})
    after = stream("d1", at(hours=1), {"temp_c": [20.0] * 6})
    last_before = before[-1].received_at
    assert last_before is not None
    during = OFFLINE(cabinet(readings=before), at(minutes=30))
    back = OFFLINE(cabinet(readings=before + after), at(hours=1, minutes=2))
    assert [f.state for f in back] == ["clear"]
    assert back[0].episode == during[0].episode == last_before.isoformat()


def test_a_retained_online_flag_does_not_hide_silence() -> None:
    s = cabinet(last_seen=at(), online=True)
    (finding,) = OFFLINE(s, at(hours=1))
    assert finding.state == "firing"
    assert finding.details["online_flag"] is True


def test_an_event_only_scale_is_quiet_by_design_while_connected() -> None:
    connected = site(device(DeviceKind.WASTE_SCALE, last_seen=at(), online=True))
    assert state(OFFLINE(connected, at(hours=8))) == "clear"
    unknown = site(device(DeviceKind.WASTE_SCALE, last_seen=at()))
    assert OFFLINE(unknown, at(hours=8)) == []
    gone = site(device(DeviceKind.WASTE_SCALE, last_seen=at(), online=False))
    assert state(OFFLINE(gone, at(minutes=14))) == "clear"
    assert state(OFFLINE(gone, at(minutes=15))) == "firing"


def test_an_event_only_scale_is_silent_from_when_the_broker_reported_it_gone() -> None:
    # Its last bag at 0:00, connected until the Last Will at 6:00: the 15 min wait runs from
    # 6:00 (the Last Will is not presence itself, but a connected scale was there until it).
    data = replace(
        device(DeviceKind.WASTE_SCALE, last_seen=at(), online=False), status_at=at(hours=6)
    )
    gone = site(data)
    assert state(OFFLINE(gone, at(hours=6, minutes=14))) == "clear"
    (finding,) = OFFLINE(gone, at(hours=6, minutes=15))
    assert finding.state == "firing"
    assert finding.started_at == at(hours=6)


def test_a_device_with_metrics_is_silent_from_its_last_data_not_from_its_last_will() -> None:
    # The broker's Last Will (status_at) comes after the last reading: silence still runs
    # from the reading (a reporting device is present through its data).
    data = replace(
        device(DeviceKind.STEAM_CABINET, last_seen=at(), online=False), status_at=at(minutes=5)
    )
    (finding,) = OFFLINE(site(data), at(minutes=10))
    assert finding.state == "firing"
    assert finding.started_at == at()
