"""Ingest against the real broker and database: idempotent, dead letters, presence."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import orjson
import psycopg
import pytest

from tests.factories import drop_devices, make_device, make_site
from tests.mqtt_helpers import DevicePublisher
from weijian.config import Settings
from weijian.devices.models import DeviceCredentials
from weijian.ingest.worker import TelemetryIngestor


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def scalar(settings: Settings, query: str, *params: object) -> object:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


@pytest.fixture
def device(settings: Settings, event_loop_runner: object) -> Iterator[DeviceCredentials]:
    import asyncio

    runner: asyncio.Runner = event_loop_runner  # type: ignore[assignment]
    site = runner.run(make_site(settings))
    creds = runner.run(make_device(settings, site))
    yield creds
    drop_devices(settings, [creds.device_id])


@pytest.fixture
def ingestor(settings: Settings) -> Iterator[TelemetryIngestor]:
    worker = TelemetryIngestor(settings)
    worker.start()
    assert worker.wait_connected(10)
    time.sleep(0.2)  # subscriptions acknowledged
    yield worker
    worker.stop()


@pytest.fixture
def publisher(device: DeviceCredentials) -> Iterator[DevicePublisher]:
    pub = DevicePublisher(device)
    yield pub
    pub.close()


def test_resend_is_not_double_counted(
    settings: Settings, ingestor: TelemetryIngestor, publisher: DevicePublisher
) -> None:
    reading = {"seq": 1, "ts": now_ms(), "metrics": {"temp_c": 101.4, "door_open": 0}}
    publisher.publish("telemetry", reading)
    publisher.publish("telemetry", reading)
    publisher.publish("telemetry", [reading, reading])
    wait_for(lambda: ingestor.stats.messages >= 3)
    assert scalar(settings, "SELECT count(*) FROM readings") == 2
    assert scalar(settings, "SELECT value FROM readings WHERE metric = 'temp_c'") == 101.4
    # Each committed batch announced its device to the detectors (one NOTIFY per batch here).
    assert 1 <= ingestor.stats.notifications <= ingestor.stats.batches


def test_malformed_payload_goes_to_dead_letters_and_the_next_good_one_is_stored(
    settings: Settings, ingestor: TelemetryIngestor, publisher: DevicePublisher
) -> None:
    publisher.publish("telemetry", b"{not json")
    publisher.publish("telemetry", {"seq": 2, "ts": now_ms(), "metrics": {"temp_c": 99.0}})
    wait_for(lambda: ingestor.stats.messages >= 2)
    assert scalar(settings, "SELECT count(*) FROM readings") == 1
    reason = scalar(settings, "SELECT reason FROM dead_letters")
    assert isinstance(reason, str)
    assert reason.startswith("not valid JSON")
    assert scalar(settings, "SELECT payload FROM dead_letters") == b"{not json"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not valid JSON"),
        (b'{"seq": 1, "ts": 1, "metrics": {"temp_c": NaN}}', "not valid JSON"),
        (b'{"seq": 1, "ts": 1, "metrics": {"temp_c": Infinity}}', "not valid JSON"),
        (orjson.dumps({"seq": "x", "ts": 1, "metrics": {"temp_c": 1}}), "seq"),
        (orjson.dumps({"seq": 1, "metrics": {"temp_c": 1}}), "ts is missing"),
        (
            orjson.dumps({"seq": 1, "ts": 4102444800000, "metrics": {"temp_c": 1}}),
            "days from the receive time",
        ),
        (
            orjson.dumps({"seq": 1, "ts": 1, "metrics": {"temp_c": "hot"}}),
            "days from the receive time",
        ),
    ],
)
def test_every_kind_of_bad_input_is_dead_lettered(
    settings: Settings,
    ingestor: TelemetryIngestor,
    publisher: DevicePublisher,
    payload: bytes,
    reason: str,
) -> None:
    publisher.publish("telemetry", payload)
    publisher.publish("telemetry", {"seq": 5, "ts": now_ms(), "metrics": {"temp_c": 20.5}})
    wait_for(lambda: ingestor.stats.messages >= 2)
    stored = scalar(settings, "SELECT reason FROM dead_letters")
    assert isinstance(stored, str)
    assert reason in stored
    assert scalar(settings, "SELECT count(*) FROM readings") == 1


def test_large_payload_and_foreign_device_id(
    settings: Settings, ingestor: TelemetryIngestor, publisher: DevicePublisher
) -> None:
    big = (
        b'{"seq": 1, "ts": 1, "metrics": {"temp_c": 1}, "pad": "'
        + b"x" * (10 * 1024 * 1024)
        + b'"}'
    )
    publisher.publish("telemetry", big)
    publisher.publish(
        "telemetry",
        {"device_id": "someone-else", "seq": 2, "ts": now_ms(), "metrics": {"temp_c": 1}},
    )
    publisher.publish("telemetry", {"seq": 3, "ts": now_ms(), "metrics": {"temp_c": 21}})
    wait_for(lambda: ingestor.stats.messages >= 3, timeout=30)
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT reason, payload_size FROM dead_letters ORDER BY id").fetchall()
    reasons = " | ".join(r[0] for r in rows)
    assert "exceeds the limit" in reasons
    assert "not the topic's" in reasons
    assert max(r[1] for r in rows) > 10 * 1024 * 1024
    assert scalar(settings, "SELECT count(*) FROM readings") == 1


def test_unknown_device_is_dead_lettered(settings: Settings, ingestor: TelemetryIngestor) -> None:
    from weijian.mqtt import new_client

    client = new_client(settings.mqtt, "platform-as-ghost")
    client.connect(settings.mqtt.host, settings.mqtt.port)
    client.loop_start()
    try:
        info = client.publish(
            f"{settings.mqtt_topic_root}/ghost-1/telemetry",
            orjson.dumps({"seq": 1, "ts": now_ms(), "metrics": {"temp_c": 1}}),
            qos=1,
        )
        info.wait_for_publish(10)
        wait_for(lambda: ingestor.stats.messages >= 1)
    finally:
        client.disconnect()
        client.loop_stop()
    assert scalar(settings, "SELECT reason FROM dead_letters") == "unknown device 'ghost-1'"


def test_events_backlog_and_presence(
    settings: Settings,
    ingestor: TelemetryIngestor,
    publisher: DevicePublisher,
    device: DeviceCredentials,
) -> None:
    publisher.publish("status", {"online": True})
    t = now_ms()
    publisher.publish(
        "events",
        [
            {"seq": 1, "ts": t - 700_000, "type": "batch_start", "data": {"batch_id": "B1"}},
            {"seq": 2, "ts": t, "type": "batch_end", "data": {"batch_id": "B1"}},
            {"seq": 3, "ts": t, "type": "bag_in", "data": {}},
        ],
    )
    wait_for(lambda: ingestor.stats.messages >= 2)
    assert scalar(settings, "SELECT count(*) FROM events") == 2
    assert "not one a steam_cabinet sends" in str(
        scalar(settings, "SELECT reason FROM dead_letters")
    )
    assert scalar(settings, "SELECT online FROM devices WHERE id = %s", device.device_id) is True
    # Activity right after a status write is held back for the refresh interval and written
    # once the ingest is idle (weijian/ingest/presence.py).
    wait_for(
        lambda: (
            scalar(settings, "SELECT last_seq FROM devices WHERE id = %s", device.device_id) == 2
        ),
        timeout=5.0,
    )
    seen = scalar(settings, "SELECT last_seen_at FROM devices WHERE id = %s", device.device_id)
    publisher.publish("status", {"online": False})
    wait_for(lambda: ingestor.stats.messages >= 3)
    wait_for(
        lambda: (
            scalar(settings, "SELECT online FROM devices WHERE id = %s", device.device_id) is False
        ),
        timeout=5.0,
    )
    # `online=false` (a Last Will, sent by the broker) is not the device being heard from:
    # the offline wait runs from its last data.
    assert (
        scalar(settings, "SELECT last_seen_at FROM devices WHERE id = %s", device.device_id) == seen
    )


def test_a_resend_with_another_value_is_kept_out_and_dead_lettered_as_a_conflict(
    settings: Settings, ingestor: TelemetryIngestor, publisher: DevicePublisher
) -> None:
    ts = now_ms()
    publisher.publish("telemetry", {"seq": 7, "ts": ts, "metrics": {"temp_c": 101.4}})
    wait_for(lambda: ingestor.stats.messages >= 1)
    # The same time again: once as a plain resend, once replayed with an altered value.
    publisher.publish("telemetry", {"seq": 7, "ts": ts, "metrics": {"temp_c": 101.4}})
    publisher.publish(
        "telemetry", {"seq": 7, "ts": ts, "metrics": {"temp_c": 85.0, "door_open": 1}}
    )
    wait_for(lambda: ingestor.stats.messages >= 3)
    with psycopg.connect(settings.database_url) as conn:
        stored = conn.execute("SELECT metric, value FROM readings ORDER BY metric").fetchall()
        letters = conn.execute(
            "SELECT topic, device_id, reason, payload FROM dead_letters"
        ).fetchall()
    # door_open was new at that time; temp_c keeps its first value.
    assert stored == [("door_open", 1.0), ("temp_c", 101.4)]
    assert len(letters) == 1
    topic, device_id, reason, payload = letters[0]
    assert reason == "conflicting_duplicate"
    assert topic == publisher.credentials.topics["telemetry"]
    assert device_id == publisher.credentials.device_id
    assert orjson.loads(payload) == {"seq": 7, "ts": ts, "metrics": {"temp_c": 85.0}}
    assert ingestor.stats.dead_letters == 1
