"""The ingest's MQTT receive client against the project's broker: persistent session,
acknowledgements per connection, the in-flight window, refusals; and a prompt stop."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest

from tests.factories import drop_devices, make_device, make_site
from weijian.config import MqttTarget, Settings
from weijian.devices.models import DeviceCredentials
from weijian.ingest.subscriber import Delivery, MqttSubscriber, SessionOptions
from weijian.ingest.worker import TelemetryIngestor
from weijian.mqtt import new_client


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Inbox:
    """Collects deliveries from the subscriber's thread."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()

    def __call__(self, delivery: Delivery) -> None:
        with self._lock:
            self.deliveries.append(delivery)

    @property
    def payloads(self) -> list[bytes]:
        with self._lock:
            return [p for d in self.deliveries for p in d.payloads]

    def take(self) -> list[Delivery]:
        with self._lock:
            taken, self.deliveries = self.deliveries, []
        return taken


@pytest.fixture
def publisher(settings: Settings) -> Iterator[mqtt.Client]:
    client = new_client(settings.mqtt, f"pub-{uuid.uuid4().hex[:8]}")
    client.connect(settings.mqtt.host, settings.mqtt.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def publish(client: mqtt.Client, topic: str, payloads: list[bytes]) -> None:
    infos = [client.publish(topic, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(10)


def options(settings: Settings, client_id: str, receive_maximum: int = 100) -> SessionOptions:
    return SessionOptions(
        client_id=client_id,
        topic_filters=(f"{settings.mqtt_topic_root}/+/telemetry",),
        session_expiry_s=120,
        receive_maximum=receive_maximum,
    )


def started(target: MqttTarget, opts: SessionOptions, inbox: Inbox) -> MqttSubscriber:
    sub = MqttSubscriber(target, opts, on_delivery=inbox)
    sub.start()
    assert sub.connected.wait(10)
    return sub


def test_unacknowledged_messages_come_again_to_the_resumed_session(
    settings: Settings, publisher: mqtt.Client
) -> None:
    client_id = f"sub-{uuid.uuid4().hex[:8]}"
    topic = f"{settings.mqtt_topic_root}/d1/telemetry"
    sent = [f"m{i}".encode() for i in range(5)]
    first = Inbox()
    sub = started(settings.mqtt, options(settings, client_id), first)
    publish(publisher, topic, sent)
    wait_for(lambda: len(first.payloads) == 5, "the first delivery")
    sub.stop()  # nothing acknowledged

    again = Inbox()
    sub = started(settings.mqtt, options(settings, client_id), again)
    wait_for(lambda: len(again.payloads) == 5, "the redelivery")
    assert again.payloads == sent
    for delivery in again.take():
        assert sub.ack(delivery.connection, delivery.ids)
    publish(publisher, topic, [b"later"])
    wait_for(lambda: again.payloads == [b"later"], "the next message")
    for delivery in again.take():
        sub.ack(delivery.connection, delivery.ids)
    sub.stop()

    third = Inbox()
    sub = started(settings.mqtt, options(settings, client_id), third)
    publish(publisher, topic, [b"last"])
    wait_for(lambda: third.payloads == [b"last"], "only the new message")
    sub.stop()


def test_acks_of_an_earlier_connection_are_dropped(
    settings: Settings, publisher: mqtt.Client
) -> None:
    inbox = Inbox()
    sub = started(settings.mqtt, options(settings, f"sub-{uuid.uuid4().hex[:8]}"), inbox)
    try:
        publish(publisher, f"{settings.mqtt_topic_root}/d1/telemetry", [b"x"])
        wait_for(lambda: len(inbox.payloads) == 1, "a delivery")
        (delivery,) = inbox.take()
        assert not sub.ack(delivery.connection - 1, delivery.ids)
        assert sub.ack(delivery.connection, delivery.ids)
    finally:
        sub.stop()


def test_receive_maximum_holds_the_rest_back_until_acknowledged(
    settings: Settings, publisher: mqtt.Client
) -> None:
    inbox = Inbox()
    sub = started(settings.mqtt, options(settings, f"sub-{uuid.uuid4().hex[:8]}", 10), inbox)
    try:
        sent = [f"m{i}".encode() for i in range(50)]
        publish(publisher, f"{settings.mqtt_topic_root}/d1/telemetry", sent)
        wait_for(lambda: len(inbox.payloads) >= 10, "the first window")
        time.sleep(0.5)  # what more the broker would send has time to arrive
        assert len(inbox.payloads) == 10
        received: list[bytes] = []
        while len(received) < len(sent):
            wait_for(lambda: bool(inbox.deliveries), "more messages after the acks")
            for delivery in inbox.take():
                received += delivery.payloads
                sub.ack(delivery.connection, delivery.ids)
        assert received == sent
    finally:
        sub.stop()


def test_a_refused_login_is_reported_and_never_connects(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    target = MqttTarget(f"mqtt://weijian:wrong@{settings.mqtt.host}:{settings.mqtt.port}")
    sub = MqttSubscriber(
        target, options(settings, f"sub-{uuid.uuid4().hex[:8]}"), on_delivery=Inbox()
    )
    with caplog.at_level(logging.ERROR, logger="weijian.ingest.subscriber"):
        sub.start()
        # Mosquitto answers a wrong password with 0x87 rather than 0x86.
        wait_for(lambda: "broker refused the ingest session" in caplog.text, "the refusal")
    assert "not authorized (0x87)" in caplog.text
    assert not sub.connected.is_set()
    sub.stop()


# -- the worker: a prompt stop under a backlog ---------------------------------------------------


@pytest.fixture
def device(settings: Settings, event_loop_runner: object) -> Iterator[DeviceCredentials]:
    import asyncio

    runner: asyncio.Runner = event_loop_runner  # type: ignore[assignment]
    site = runner.run(make_site(settings))
    creds = runner.run(make_device(settings, site))
    yield creds
    drop_devices(settings, [creds.device_id])


def test_stop_under_a_backlog_commits_what_it_holds_and_the_rest_comes_next_time(
    settings: Settings, publisher: mqtt.Client, device: DeviceCredentials
) -> None:
    small = settings.model_copy(update={"ingest_batch_max": 50})
    away = TelemetryIngestor(small, receive_maximum=100)
    away.start()
    assert away.wait_connected(10)
    away.stop()  # its session now queues for it
    base = int(time.time() * 1000) - 3_600_000
    count = 5000
    payloads = [
        orjson.dumps({"seq": i, "ts": base + i, "metrics": {"temp_c": 20.0 + i % 7}})
        for i in range(count)
    ]
    publish(publisher, device.topics["telemetry"], payloads)

    worker = TelemetryIngestor(small, receive_maximum=100)
    worker.start()
    wait_for(lambda: worker.stats.batches >= 3, "the first batches")
    worker.stop(timeout=60)
    assert not worker._writer.is_alive()  # returned because it finished, not at the timeout
    assert worker.stats.messages < count

    again = TelemetryIngestor(settings)
    again.start()
    try:
        wait_for(lambda: stored(settings) == count, "the rest of the backlog", timeout=60)
    finally:
        again.stop()
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(DISTINCT seq), count(*) FROM readings").fetchone()
    assert row == (count, count)


def stored(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
    return int(row[0]) if row else 0
