"""A device-side MQTT publisher for tests (a stock MQTT v5 client with a device's credentials)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from weijian.config import MqttTarget
from weijian.devices.models import DeviceCredentials
from weijian.mqtt import new_client


class DevicePublisher:
    """Connects as a device and publishes QoS 1 messages, waiting for each PUBACK."""

    def __init__(self, credentials: DeviceCredentials) -> None:
        self.credentials = credentials
        target = MqttTarget(credentials.broker)
        self.client = new_client(
            target,
            f"{credentials.device_id}-{uuid.uuid4().hex[:6]}",
            username=credentials.username,
            password=credentials.password,
        )
        self._connected = threading.Event()
        self.connect_reason: Any = None

        def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            self.connect_reason = reason
            self._connected.set()

        self.acks: dict[int, int] = {}

        def on_publish(_c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
            self.acks[mid] = int(reason.value) if hasattr(reason, "value") else int(reason)

        self.client.on_connect = on_connect
        self.client.on_publish = on_publish
        self.client.connect(target.host, target.port)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("device did not connect")

    def publish(self, channel: str, payload: Any, topic: str | None = None) -> int:
        """Publish and wait for the broker's acknowledgement; returns the PUBACK reason code."""
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        info = self.client.publish(topic or self.credentials.topics[channel], body, qos=1)
        info.wait_for_publish(10)
        return self.acks.get(info.mid, 0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
