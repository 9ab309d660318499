"""Publishing simulated devices over MQTT: one paho client per device, all driven from the
caller's thread with a selector (no thread per device)."""

from __future__ import annotations

import contextlib
import logging
import selectors
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from weijian.config import MqttTarget
from weijian.simulator.device import OFFLINE, Outgoing
from weijian.simulator.provision import DeviceCredentials

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """The broker refused a device or did not acknowledge in time."""


@dataclass
class _Conn:
    ref: str
    creds: DeviceCredentials
    client: mqtt.Client
    pending: set[int] = field(default_factory=set)
    connected: bool = False
    refused: str | None = None


def new_device_client(creds: DeviceCredentials, client_id: str) -> tuple[mqtt.Client, MqttTarget]:
    """A paho MQTT v5 client with the device's credentials and its Last Will (offline, retained)."""
    target = MqttTarget(creds.broker_url)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.username_pw_set(creds.username, creds.password)
    if target.tls:
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    client.will_set(creds.topic("status"), OFFLINE, qos=1, retain=True)
    client.max_inflight_messages_set(
        0
    )  # no client-side window; the broker's receive-maximum applies
    client.max_queued_messages_set(0)
    return client, target


class MqttPublisher:
    """A MessageSink that connects each device with its own credentials and publishes QoS 1.

    `send` returns once every PUBACK of the batch has arrived. A PUBACK with an error reason
    (e.g. 135, not authorized) raises PublishError naming the device and topic.
    """

    def __init__(
        self,
        credentials: Mapping[str, DeviceCredentials],
        *,
        keepalive: int = 60,
        timeout_s: float = 30.0,
    ) -> None:
        self.credentials = dict(credentials)
        self.keepalive = keepalive
        self.timeout_s = timeout_s
        self._sel = selectors.DefaultSelector()
        self._conns: dict[str, _Conn] = {}
        self._errors: list[str] = []
        self._last_misc = time.monotonic()
        self.published = 0

    # -- MessageSink ----------------------------------------------------------------------
    def send(self, messages: Sequence[Outgoing]) -> None:
        for message in messages:
            if message.action == "connect":
                self.connect(message.device)
            elif message.action in ("disconnect", "disconnect_will"):
                self.disconnect(message.device, will=message.action == "disconnect_will")
            else:
                self._publish(message.device, message.channel, message.payload, message.retain)
        self.flush()

    def close(self) -> None:
        self.flush()
        for ref in list(self._conns):
            self.disconnect(ref, will=False)
        self._sel.close()

    # -- connections ----------------------------------------------------------------------
    def connect(self, ref: str) -> None:
        """Connect a device (clean start) and publish its retained online status."""
        if ref in self._conns:
            self.disconnect(ref, will=False)
        creds = self._creds(ref)
        client, target = new_device_client(creds, creds.device_id)
        conn = _Conn(ref, creds, client)

        def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
            if reason.is_failure:
                conn.refused = str(reason)
            else:
                conn.connected = True

        def on_publish(_c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
            conn.pending.discard(mid)
            if reason.is_failure:
                self._errors.append(
                    f"device {ref} ({creds.device_id}): broker refused a publish: {reason}"
                )

        client.on_connect = on_connect
        client.on_publish = on_publish
        try:
            client.connect(target.host, target.port, keepalive=self.keepalive, clean_start=True)
        except OSError as exc:
            raise PublishError(
                f"device {ref}: cannot reach broker {target.public_url}: {exc}"
            ) from None
        sock = client.socket()
        assert sock is not None
        self._sel.register(sock, selectors.EVENT_READ, conn)
        self._conns[ref] = conn
        deadline = time.monotonic() + self.timeout_s
        while not conn.connected:
            if conn.refused:
                self._drop(conn)
                raise PublishError(
                    f"device {ref} ({creds.device_id}): broker refused the connection: "
                    f"{conn.refused}"
                )
            if time.monotonic() > deadline:
                self._drop(conn)
                raise PublishError(f"device {ref}: no CONNACK within {self.timeout_s:g} s")
            self._poll(0.05)
        self._publish(ref, "status", b'{"online":true}', retain=True)

    def disconnect(self, ref: str, *, will: bool) -> None:
        """Disconnect; with `will` the broker publishes the Last Will (MQTT v5 reason 0x04)."""
        conn = self._conns.get(ref)
        if conn is None:
            return
        self._flush_conn(conn)
        self._drop(conn, will=will)

    def _drop(self, conn: _Conn, *, will: bool = False) -> None:
        sock = conn.client.socket()
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
        if conn.connected:
            code = ReasonCode(
                PacketTypes.DISCONNECT,
                "Disconnect with will message" if will else "Normal disconnection",
            )
            conn.client.disconnect(reasoncode=code)
            deadline = time.monotonic() + 5
            while (
                conn.client.want_write()
                and conn.client.socket() is not None
                and time.monotonic() < deadline
            ):
                conn.client.loop_write()
        self._conns.pop(conn.ref, None)

    def _creds(self, ref: str) -> DeviceCredentials:
        try:
            return self.credentials[ref]
        except KeyError:
            raise PublishError(f"no credentials for device {ref}") from None

    # -- publishing -----------------------------------------------------------------------
    def _publish(self, ref: str, channel: str, payload: bytes, retain: bool = False) -> None:
        conn = self._conns.get(ref)
        if conn is None:
            raise PublishError(f"device {ref} publishes while not connected")
        info = conn.client.publish(conn.creds.topic(channel), payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
            raise PublishError(f"device {ref}: publish failed: {mqtt.error_string(info.rc)}")
        conn.pending.add(info.mid)
        self.published += 1

    def flush(self) -> None:
        """Wait until every publish so far is acknowledged."""
        deadline = time.monotonic() + self.timeout_s
        while any(c.pending for c in self._conns.values()):
            if time.monotonic() > deadline:
                waiting = sum(len(c.pending) for c in self._conns.values())
                raise PublishError(
                    f"{waiting} publishes not acknowledged within {self.timeout_s:g} s"
                )
            self._poll(0.05)
        self._raise_errors()

    def _flush_conn(self, conn: _Conn) -> None:
        deadline = time.monotonic() + self.timeout_s
        while conn.pending and time.monotonic() < deadline:
            self._poll(0.05)
        self._raise_errors()

    def _raise_errors(self) -> None:
        if self._errors:
            first, self._errors = self._errors[0], []
            raise PublishError(first)

    def _poll(self, timeout: float) -> None:
        for key in self._sel.get_map().values():
            conn: _Conn = key.data
            events = selectors.EVENT_READ | (
                selectors.EVENT_WRITE if conn.client.want_write() else 0
            )
            if key.events != events:
                self._sel.modify(key.fileobj, events, conn)
        for key, mask in self._sel.select(timeout):
            conn = key.data
            if mask & selectors.EVENT_READ:
                rc = conn.client.loop_read()
                if conn.refused:
                    self._drop(conn)
                    raise PublishError(
                        f"device {conn.ref} ({conn.creds.device_id}): broker refused the "
                        f"connection: {conn.refused}"
                    )
                if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                    raise PublishError(
                        f"device {conn.ref}: connection lost ({mqtt.error_string(rc)})"
                    )
            if mask & selectors.EVENT_WRITE:
                conn.client.loop_write()
        now = time.monotonic()
        if now - self._last_misc > 1.0:
            self._last_misc = now
            for conn in self._conns.values():
                conn.client.loop_misc()
