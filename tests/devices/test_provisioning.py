"""Provisioning against the real broker: credentials work; a device keeps to its own topics."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.factories import drop_devices, make_device, make_site
from tests.mqtt_helpers import DevicePublisher
from weijian.config import Settings
from weijian.devices.broker import BrokerError, DynamicSecurity
from weijian.mqtt import new_client

NOT_AUTHORIZED = 135


def _subscriber(settings: Settings, topic: str) -> tuple[mqtt.Client, list[bytes], threading.Event]:
    got: list[bytes] = []
    ready = threading.Event()
    client = new_client(settings.mqtt, f"sub-{uuid.uuid4().hex[:8]}")

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe(topic, qos=1)

    def on_subscribe(*_: Any) -> None:
        ready.set()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(settings.mqtt.host, settings.mqtt.port)
    client.loop_start()
    assert ready.wait(10)
    return client, got, ready


@pytest.mark.anyio
async def test_device_publishes_only_to_its_own_topics(settings: Settings) -> None:
    site = await make_site(settings)
    mine = await make_device(settings, site)
    other = await make_device(settings, site)
    sub, got, _ = _subscriber(settings, f"{settings.mqtt_topic_root}/#")
    device = DevicePublisher(mine)
    try:
        assert mine.username == mine.device_id
        assert mine.topics["telemetry"] == f"{settings.mqtt_topic_root}/{mine.device_id}/telemetry"
        assert mine.broker == settings.broker_public_url
        assert device.publish("telemetry", {"seq": 1, "ts": 1, "metrics": {"temp_c": 20}}) < 128
        denied = device.publish("telemetry", b"{}", topic=other.topics["telemetry"])
        assert denied == NOT_AUTHORIZED
        for _ in range(50):
            if got:
                break
            threading.Event().wait(0.05)
        assert len(got) == 1  # only the message on its own topic was delivered
    finally:
        device.close()
        sub.disconnect()
        sub.loop_stop()
        drop_devices(settings, [mine.device_id, other.device_id])


@pytest.mark.anyio
async def test_wrong_password_is_refused(settings: Settings) -> None:
    site = await make_site(settings)
    creds = await make_device(settings, site)
    try:
        bad = creds.model_copy(update={"password": "not-the-password"})
        device = DevicePublisher(bad)
        assert device.connect_reason.is_failure
        device.close()
    finally:
        drop_devices(settings, [creds.device_id])


@pytest.mark.anyio
async def test_rotated_password_replaces_the_old_one(settings: Settings) -> None:
    from weijian.db.connection import connect
    from weijian.devices import service

    site = await make_site(settings)
    creds = await make_device(settings, site)
    store = DynamicSecurity(settings.mqtt, settings.mqtt_topic_root)
    try:
        conn = await connect(settings.database_url)
        async with conn:
            new = await service.rotate_credentials(
                conn=conn,
                device_id=creds.device_id,
                store=store,
                topic_root=settings.mqtt_topic_root,
                broker_url=settings.broker_public_url,
            )
        assert new.password != creds.password
        old = DevicePublisher(creds)
        assert old.connect_reason.is_failure
        old.close()
        fresh = DevicePublisher(new)
        assert not fresh.connect_reason.is_failure
        fresh.close()
    finally:
        drop_devices(settings, [creds.device_id])


@pytest.mark.anyio
async def test_device_for_unknown_site_leaves_nothing_behind(settings: Settings) -> None:
    from weijian.devices.service import RegistryError

    with pytest.raises(RegistryError, match="no site"):
        await make_device(settings, "no-such-site")


def test_broker_error_is_clear_when_the_broker_is_down(settings: Settings) -> None:
    from weijian.config import MqttTarget

    store = DynamicSecurity(
        MqttTarget("mqtt://weijian:weijian@127.0.0.1:1"), settings.mqtt_topic_root
    )
    with pytest.raises(BrokerError, match="cannot reach the broker"):
        store.create_device("x-1", "pw", [])


@pytest.mark.anyio
async def test_leftover_broker_account_is_taken_over(settings: Settings) -> None:
    """A registry reset (fresh database) must not leave a device unable to register again."""
    site = await make_site(settings)
    store = DynamicSecurity(settings.mqtt, settings.mqtt_topic_root)
    store.create_device("d-leftover", "old-password-1", [])
    try:
        creds = await make_device(settings, site, device_id="d-leftover")
        device = DevicePublisher(creds)
        assert not device.connect_reason.is_failure
        assert device.publish("telemetry", {"seq": 1, "ts": 1, "metrics": {"temp_c": 1}}) < 128
        device.close()
    finally:
        drop_devices(settings, ["d-leftover"])
