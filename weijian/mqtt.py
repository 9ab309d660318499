"""Building paho-mqtt clients from the platform's MQTT settings."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from weijian.config import MqttTarget


def new_client(
    target: MqttTarget,
    client_id: str,
    *,
    clean_start: bool = True,
    manual_ack: bool = False,
    username: str | None = None,
    password: str | None = None,
) -> mqtt.Client:
    """An MQTT v5 client for `target` (credentials from the URL unless given)."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=manual_ack,
    )
    user = username if username is not None else target.username
    secret = password if password is not None else target.password
    if user is not None:
        client.username_pw_set(user, secret)
    if target.tls:
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    # Short backoff: while the platform is away from the broker, nothing is taken in.
    client.reconnect_delay_set(min_delay=1, max_delay=5)
    # `clean_start` is passed at connect time for MQTT v5; keep it on the client for callers.
    client.user_data_set({"clean_start": clean_start})
    return client


def topic(root: str, device_id: str, channel: str) -> str:
    """The protocol topic of a device's channel (telemetry, events, status)."""
    return f"{root}/{device_id}/{channel}"
